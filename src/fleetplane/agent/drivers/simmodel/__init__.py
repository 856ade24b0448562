"""The parts of the ``sim`` driver's site model (see ``fleetplane.agent.drivers.sim``):
events on a time line, nodes and reservations, workloads and their scheduler, OS
A/B slots, network policy and traffic, usage and faults. Each part is driven with
explicit times so that it can be tested on its own."""
