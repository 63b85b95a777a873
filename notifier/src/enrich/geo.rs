//! GeoIP country/city and ASN from MaxMind-format databases (GeoLite2 or DB-IP lite).

use std::{net::IpAddr, path::Path};

use maxminddb::{geoip2, Mmap, Reader};
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

/// The open databases; either may be absent. They are mapped, not read: a City database is about
/// 57 MB, and only the pages of the tree that lookups walk become resident, as clean pages of the
/// file that the kernel can drop and share (read into the heap, it cost 57 MB of anonymous memory,
/// and a reload held two copies).
#[derive(Default)]
pub struct GeoDb {
    country: Option<Reader<Mmap>>,
    asn: Option<Reader<Mmap>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{key} = {path}: {reason}; give a MaxMind-format .mmdb file (GeoLite2 or DB-IP lite), or remove the key")]
pub struct GeoError {
    key: &'static str,
    path: String,
    reason: String,
}

fn open(key: &'static str, path: &Path) -> Result<Reader<Mmap>, GeoError> {
    let error = |reason: String| GeoError { key, path: path.display().to_string(), reason };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    // SAFETY: the mapping is read-only, and database updates (geoipupdate, package upgrades)
    // write a new file and rename it over the old one, so the mapped inode never changes under
    // the reader; a reload maps the new file. Truncating the file in place while notifier runs
    // would make a lookup fault, which no updater does.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| error(e.to_string()))?;
    // Lookups jump from node to node across the file: without this, each page fault would read
    // ahead and map its neighbours too (480 faults made 45 MB resident instead of 2 MB, measured).
    if let Err(e) = map.advise(memmap2::Advice::Random) {
        tracing::debug!(error = %e, "madvise(MADV_RANDOM) on the GeoIP database failed; lookups read ahead.");
    }
    Reader::from_source(map).map_err(|e| error(e.to_string()))
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
