//! GeoIP country/city and ASN from MaxMind-format databases (GeoLite2 or DB-IP lite).

use std::{net::IpAddr, path::Path};

use maxminddb::{geoip2, Reader};
use serde::Serialize;

use crate::config;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 code.
    pub country: Option<String>,
    pub country_name: Option<String>,
    pub city: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Asn {
    pub number: u32,
    pub org: Option<String>,
}

/// The open databases; either may be absent.
#[derive(Default)]
pub struct GeoDb {
    country: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{key} = {path}: {reason}; give a MaxMind-format .mmdb file (GeoLite2 or DB-IP lite), or remove the key")]
pub struct GeoError {
    key: &'static str,
    path: String,
    reason: String,
}

fn open(key: &'static str, path: &Path) -> Result<Reader<Vec<u8>>, GeoError> {
    Reader::open_readfile(path).map_err(|e| GeoError { key, path: path.display().to_string(), reason: e.to_string() })
}

impl GeoDb {
    pub fn open(cfg: &config::Geoip) -> Result<Self, GeoError> {
        Ok(Self {
            country: cfg.country_db.as_deref().map(|p| open("geoip.country_db", p)).transpose()?,
            asn: cfg.asn_db.as_deref().map(|p| open("geoip.asn_db", p)).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.country.is_none() && self.asn.is_none()
    }

    /// Country (and city, with a City database) of `ip`, if the database knows it.
    pub fn geo(&self, ip: IpAddr) -> Option<Geo> {
        let reader = self.country.as_ref()?;
        // A City record is a superset of a Country record, so it decodes either database.
        let rec: geoip2::City<'_> = reader.lookup(ip).ok()?.decode().ok()??;
        let geo = Geo {
            country: rec.country.iso_code.map(str::to_owned),
            country_name: rec.country.names.english.map(str::to_owned),
            city: rec.city.names.english.map(str::to_owned),
        };
        (geo != Geo::default()).then_some(geo)
    }

    pub fn asn(&self, ip: IpAddr) -> Option<Asn> {
        let reader = self.asn.as_ref()?;
        let rec: geoip2::Asn<'_> = reader.lookup(ip).ok()?.decode().ok()??;
        Some(Asn { number: rec.autonomous_system_number?, org: rec.autonomous_system_organization.map(str::to_owned) })
    }
}
