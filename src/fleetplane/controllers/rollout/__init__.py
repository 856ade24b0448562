"""The rollout engine (DESIGN item 4): strategies, wave planning and a pure state machine.

``docs/rollouts.md`` describes the phases, the strategies and how a controller drives it.
"""

from fleetplane.controllers.rollout.engine import (
    ACTIONS,
    Action,
    SiteObservation,
    StepResult,
    actions_from_spec,
    holds_new,
    initial_state,
    revision_for,
    step,
)
from fleetplane.controllers.rollout.state import PHASES, SITE_STATES, RolloutState
from fleetplane.controllers.rollout.strategy import Strategy
from fleetplane.controllers.rollout.timing import next_wakeup
from fleetplane.kinds.rollout import Phase

__all__ = [
    "ACTIONS",
    "PHASES",
    "SITE_STATES",
    "Action",
    "Phase",
    "RolloutState",
    "SiteObservation",
    "StepResult",
    "Strategy",
    "actions_from_spec",
    "holds_new",
    "initial_state",
    "next_wakeup",
    "revision_for",
    "step",
]
