//! Enrichment of a login: GeoIP country/city and ASN, reverse DNS, and process ancestry.
pub mod geo;
pub mod process;
pub mod rdns;
