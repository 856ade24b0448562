"""Real cities the simulated fleet is spread over: name, ISO country code, world region
(the ``region`` label), latitude and longitude (city centre, rounded)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    name: str
    country: str  # ISO 3166-1 alpha-2, lower case (a label value)
    region: str
    latitude: float
    longitude: float

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" ", "-").replace(".", "")


CITIES: tuple[City, ...] = (
    # North America, west / east
    City("Seattle", "us", "na-west", 47.61, -122.33),
    City("San Francisco", "us", "na-west", 37.77, -122.42),
    City("Los Angeles", "us", "na-west", 34.05, -118.24),
    City("Phoenix", "us", "na-west", 33.45, -112.07),
    City("Denver", "us", "na-west", 39.74, -104.99),
    City("Vancouver", "ca", "na-west", 49.28, -123.12),
    City("Chicago", "us", "na-east", 41.88, -87.63),
    City("New York", "us", "na-east", 40.71, -74.01),
    City("Boston", "us", "na-east", 42.36, -71.06),
    City("Atlanta", "us", "na-east", 33.75, -84.39),
    City("Dallas", "us", "na-east", 32.78, -96.80),
    City("Toronto", "ca", "na-east", 43.65, -79.38),
    City("Montreal", "ca", "na-east", 45.50, -73.57),
    # Latin America
    City("Mexico City", "mx", "latam", 19.43, -99.13),
    City("Monterrey", "mx", "latam", 25.69, -100.32),
    City("Bogota", "co", "latam", 4.71, -74.07),
    City("Lima", "pe", "latam", -12.05, -77.04),
    City("Sao Paulo", "br", "latam", -23.55, -46.63),
    City("Rio de Janeiro", "br", "latam", -22.91, -43.17),
    City("Buenos Aires", "ar", "latam", -34.60, -58.38),
    City("Santiago", "cl", "latam", -33.45, -70.67),
    # Europe, west / central / north
    City("London", "gb", "eu-west", 51.51, -0.13),
    City("Manchester", "gb", "eu-west", 53.48, -2.24),
    City("Dublin", "ie", "eu-west", 53.35, -6.26),
    City("Paris", "fr", "eu-west", 48.86, 2.35),
    City("Lyon", "fr", "eu-west", 45.76, 4.84),
    City("Madrid", "es", "eu-west", 40.42, -3.70),
    City("Barcelona", "es", "eu-west", 41.39, 2.17),
    City("Lisbon", "pt", "eu-west", 38.72, -9.14),
    City("Amsterdam", "nl", "eu-west", 52.37, 4.90),
    City("Berlin", "de", "eu-central", 52.52, 13.40),
    City("Munich", "de", "eu-central", 48.14, 11.58),
    City("Frankfurt", "de", "eu-central", 50.11, 8.68),
    City("Zurich", "ch", "eu-central", 47.38, 8.54),
    City("Vienna", "at", "eu-central", 48.21, 16.37),
    City("Milan", "it", "eu-central", 45.46, 9.19),
    City("Warsaw", "pl", "eu-central", 52.23, 21.01),
    City("Prague", "cz", "eu-central", 50.08, 14.44),
    City("Stockholm", "se", "eu-north", 59.33, 18.07),
    City("Oslo", "no", "eu-north", 59.91, 10.75),
    City("Copenhagen", "dk", "eu-north", 55.68, 12.57),
    City("Helsinki", "fi", "eu-north", 60.17, 24.94),
    # Middle East and Africa
    City("Dubai", "ae", "mea", 25.20, 55.27),
    City("Riyadh", "sa", "mea", 24.71, 46.68),
    City("Istanbul", "tr", "mea", 41.01, 28.98),
    City("Cairo", "eg", "mea", 30.04, 31.24),
    City("Lagos", "ng", "mea", 6.52, 3.38),
    City("Nairobi", "ke", "mea", -1.29, 36.82),
    City("Johannesburg", "za", "mea", -26.20, 28.05),
    City("Cape Town", "za", "mea", -33.92, 18.42),
    # Asia-Pacific
    City("Mumbai", "in", "apac-south", 19.08, 72.88),
    City("Bangalore", "in", "apac-south", 12.97, 77.59),
    City("Delhi", "in", "apac-south", 28.70, 77.10),
    City("Singapore", "sg", "apac-south", 1.35, 103.82),
    City("Jakarta", "id", "apac-south", -6.21, 106.85),
    City("Bangkok", "th", "apac-south", 13.76, 100.50),
    City("Sydney", "au", "apac-south", -33.87, 151.21),
    City("Melbourne", "au", "apac-south", -37.81, 144.96),
    City("Auckland", "nz", "apac-south", -36.85, 174.76),
    City("Tokyo", "jp", "apac-north", 35.68, 139.69),
    City("Osaka", "jp", "apac-north", 34.69, 135.50),
    City("Sapporo", "jp", "apac-north", 43.06, 141.35),
    City("Seoul", "kr", "apac-north", 37.57, 126.98),
    City("Busan", "kr", "apac-north", 35.18, 129.08),
    City("Shanghai", "cn", "apac-north", 31.23, 121.47),
    City("Shenzhen", "cn", "apac-north", 22.54, 114.06),
    City("Hong Kong", "hk", "apac-north", 22.32, 114.17),
    City("Taipei", "tw", "apac-north", 25.03, 121.57),
)

REGIONS: tuple[str, ...] = tuple(sorted({c.region for c in CITIES}))
