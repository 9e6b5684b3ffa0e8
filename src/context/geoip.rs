//! GeoIP enrichment from MaxMind-format databases: a city database (country, region, city,
//! coordinates, accuracy radius), and optional ASN, anonymous-IP (GeoIP2-Anonymous-IP schema)
//! and connection-type (GeoIP2-Connection-Type schema) databases, plus the operator's lists of
//! hosting and VPN ASNs. Every file is reloaded in place when it changes ([`GeoIp::reload_if_changed`], called on SIGHUP and by the reload job); a
//! file that no longer opens leaves the database in use untouched. Without a database every
//! lookup answers `None`, and the location detectors say "unknown".

use crate::domain::context::{Anonymizer, Geo};
use maxminddb::{Reader, geoip2};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {reason}")]
pub struct GeoIpError {
    pub path: PathBuf,
    pub reason: String,
}

struct Loaded {
    reader: Reader<Vec<u8>>,
    build: u64,
    /// What the file looked like when read: a change of either means "read it again".
    stamp: (Option<SystemTime>, u64),
}

/// One database file and what was last loaded from it.
struct Database {
    label: &'static str,
    path: PathBuf,
    loaded: RwLock<Arc<Loaded>>,
}

fn stamp(path: &Path) -> Result<(Option<SystemTime>, u64), std::io::Error> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

impl Database {
    fn open(label: &'static str, path: PathBuf) -> Result<Database, GeoIpError> {
        let loaded = load(label, &path)?;
        Ok(Database {
            label,
            path,
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().expect("geoip lock").clone()
    }

    fn reload_if_changed(&self) -> Result<bool, GeoIpError> {
        let now = stamp(&self.path).map_err(|e| GeoIpError {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if now == self.current().stamp {
            return Ok(false);
        }
        let fresh = load(self.label, &self.path)?;
        tracing::info!(database = self.label, path = %self.path.display(), build = fresh.build, "GeoIP database reloaded");
        *self.loaded.write().expect("geoip lock") = Arc::new(fresh);
        Ok(true)
    }
}

fn load(label: &'static str, path: &Path) -> Result<Loaded, GeoIpError> {
    let error = |reason: String| GeoIpError {
        path: path.to_owned(),
        reason,
    };
    let stamp = stamp(path).map_err(|e| error(e.to_string()))?;
    let reader = Reader::open_readfile(path).map_err(|e| error(e.to_string()))?;
    let build = reader.metadata().build_epoch;
    metrics::gauge!("sessiond_geoip_build_timestamp_seconds", "database" => label)
        .set(build as f64);
    Ok(Loaded {
        reader,
        build,
        stamp,
    })
}

/// The configured databases. Cheap to share: lookups take a read lock only to clone an `Arc`.
#[derive(Default)]
pub struct GeoIp {
    city: Option<Database>,
    asn: Option<Database>,
    anonymous: Option<Database>,
    connection: Option<Database>,
    hosting_asns: Vec<u32>,
    vpn_asns: Vec<u32>,
}

/// The optional network-kind sources: two databases and two operator lists of ASNs.
#[derive(Debug, Clone, Default)]
pub struct NetworkSources<'a> {
    pub anonymous_ip: Option<&'a Path>,
    pub connection_type: Option<&'a Path>,
    pub hosting_asns: &'a [u32],
    pub vpn_asns: &'a [u32],
}

impl GeoIp {
    /// Opens the configured files; a configured file that cannot be read stops the start.
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<GeoIp, GeoIpError> {
        Ok(GeoIp {
            city: city
                .map(|p| Database::open("city", p.to_owned()))
                .transpose()?,
            asn: asn
                .map(|p| Database::open("asn", p.to_owned()))
                .transpose()?,
            ..Default::default()
        })
    }

    /// Adds the network-kind sources; a configured file that cannot be read stops the start.
    pub fn with_networks(mut self, n: &NetworkSources<'_>) -> Result<GeoIp, GeoIpError> {
        self.anonymous = n
            .anonymous_ip
            .map(|p| Database::open("anonymous_ip", p.to_owned()))
            .transpose()?;
        self.connection = n
            .connection_type
            .map(|p| Database::open("connection_type", p.to_owned()))
            .transpose()?;
        self.hosting_asns = n.hosting_asns.to_vec();
        self.vpn_asns = n.vpn_asns.to_vec();
        Ok(self)
    }

    pub fn is_configured(&self) -> bool {
        self.city.is_some()
    }

    /// Everything the databases know about `ip`; `None` when neither knows it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Geo> {
        let mut geo = Geo::default();
        let mut found = false;
        if let Some(db) = &self.city {
            let loaded = db.current();
            if let Ok(result) = loaded.reader.lookup(ip)
                && let Ok(Some(c)) = result.decode::<geoip2::City>()
            {
                found = true;
                geo.country = c.country.iso_code.map(str::to_owned);
                geo.region = c.subdivisions.first().and_then(|s| {
                    s.iso_code
                        .or(s.names.english)
                        .map(|r| format!("{}-{r}", c.country.iso_code.unwrap_or("??")))
                });
                geo.city = c.city.names.english.map(str::to_owned);
                geo.latitude = c.location.latitude;
                geo.longitude = c.location.longitude;
                geo.accuracy_radius_km = c.location.accuracy_radius.map(u32::from);
                geo.city_build = Some(loaded.build);
            }
        }
        if let Some(db) = &self.asn {
            let loaded = db.current();
            if let Ok(result) = loaded.reader.lookup(ip)
                && let Ok(Some(a)) = result.decode::<geoip2::Asn>()
            {
                found = true;
                geo.asn = a.autonomous_system_number;
                geo.asn_org = a.autonomous_system_organization.map(str::to_owned);
                geo.asn_build = Some(loaded.build);
            }
        }
        if let Some(db) = &self.anonymous {
            let loaded = db.current();
            if let Ok(result) = loaded.reader.lookup(ip)
                && let Ok(Some(a)) = result.decode::<geoip2::AnonymousIp>()
            {
                found = true;
                let yes = |f: Option<bool>| f == Some(true);
                geo.anonymizer = if yes(a.is_tor_exit_node) {
                    Some(Anonymizer::TorExit)
                } else if yes(a.is_public_proxy) {
                    Some(Anonymizer::PublicProxy)
                } else if yes(a.is_anonymous_vpn) {
                    Some(Anonymizer::Vpn)
                } else if yes(a.is_hosting_provider) {
                    Some(Anonymizer::Hosting)
                } else if yes(a.is_anonymous) {
                    Some(Anonymizer::Anonymous)
                } else {
                    None
                };
            }
        }
        if let Some(db) = &self.connection {
            let loaded = db.current();
            if let Ok(result) = loaded.reader.lookup(ip)
                && let Ok(Some(c)) = result.decode::<geoip2::ConnectionType>()
            {
                found = true;
                geo.connection_type = c.connection_type.map(str::to_owned);
            }
        }
        // The operator's lists know their own networks better than a database: they win.
        if let Some(asn) = geo.asn {
            if self.vpn_asns.contains(&asn) {
                found = true;
                geo.anonymizer = Some(Anonymizer::Vpn);
            } else if self.hosting_asns.contains(&asn) && geo.anonymizer.is_none() {
                found = true;
                geo.anonymizer = Some(Anonymizer::Hosting);
            }
        }
        found.then_some(geo)
    }

    /// Re-reads each database whose file changed since it was loaded. Returns whether any was
    /// replaced. A file that fails to load is reported and the database in use stays.
    pub fn reload_if_changed(&self) -> Result<bool, GeoIpError> {
        let mut changed = false;
        for db in [&self.city, &self.asn, &self.anonymous, &self.connection]
            .into_iter()
            .flatten()
        {
            changed |= db.reload_if_changed()?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_db(path: &Path, city: &str, build: u64) {
        let mut w = mmdb_writer::Writer::builder("GeoIP2-City")
            .build_epoch(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(build))
            .build();
        let mut record = geoip2::City::default();
        record.city.names.english = Some(city);
        record.country.iso_code = Some("FR");
        record.subdivisions.push(geoip2::city::Subdivision {
            iso_code: Some("IDF"),
            ..Default::default()
        });
        record.location.latitude = Some(48.85);
        record.location.longitude = Some(2.35);
        record.location.accuracy_radius = Some(20);
        w.insert("192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), &record)
            .unwrap();
        std::fs::write(path, w.to_bytes().unwrap()).unwrap();
    }

    #[test]
    fn lookups_carry_the_build_and_follow_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        write_db(&path, "Paris", 1_700_000_000);
        let geo = GeoIp::open(Some(&path), None).unwrap();
        let g = geo.lookup("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(g.city.as_deref(), Some("Paris"));
        assert_eq!(g.region.as_deref(), Some("FR-IDF"));
        assert_eq!(g.accuracy_radius_km, Some(20));
        assert_eq!(g.city_build, Some(1_700_000_000));
        assert_eq!(geo.lookup("198.51.100.1".parse().unwrap()), None);
        assert!(!geo.reload_if_changed().unwrap());

        write_db(&path, "Lutece", 1_700_000_999);
        assert!(geo.reload_if_changed().unwrap());
        let g = geo.lookup("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(g.city.as_deref(), Some("Lutece"));
        assert_eq!(g.city_build, Some(1_700_000_999));

        std::fs::write(&path, b"not a database").unwrap();
        assert!(geo.reload_if_changed().is_err());
        let g = geo.lookup("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(
            g.city.as_deref(),
            Some("Lutece"),
            "a broken file leaves the loaded database in use"
        );
    }

    #[test]
    fn network_kinds_come_from_both_databases_and_the_operator_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (anon, conn, asn) = (
            dir.path().join("anon.mmdb"),
            dir.path().join("conn.mmdb"),
            dir.path().join("asn.mmdb"),
        );
        let mut w = mmdb_writer::Writer::builder("GeoIP2-Anonymous-IP").build();
        let rec = geoip2::AnonymousIp {
            is_anonymous: Some(true),
            is_anonymous_vpn: None,
            is_hosting_provider: Some(true),
            is_public_proxy: None,
            is_residential_proxy: None,
            is_tor_exit_node: None,
        };
        w.insert("198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
        std::fs::write(&anon, w.to_bytes().unwrap()).unwrap();
        let mut w = mmdb_writer::Writer::builder("GeoIP2-Connection-Type").build();
        let rec = geoip2::ConnectionType {
            connection_type: Some("Cellular"),
        };
        w.insert("192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
        std::fs::write(&conn, w.to_bytes().unwrap()).unwrap();
        let mut w = mmdb_writer::Writer::builder("GeoLite2-ASN").build();
        let rec = geoip2::Asn {
            autonomous_system_number: Some(9009),
            autonomous_system_organization: Some("M247 Europe SRL"),
        };
        w.insert("203.0.113.0/24".parse::<ipnet::IpNet>().unwrap(), &rec)
            .unwrap();
        std::fs::write(&asn, w.to_bytes().unwrap()).unwrap();
        let geo = GeoIp::open(None, Some(&asn))
            .unwrap()
            .with_networks(&NetworkSources {
                anonymous_ip: Some(&anon),
                connection_type: Some(&conn),
                hosting_asns: &[],
                vpn_asns: &[9009],
            })
            .unwrap();
        let hosting = geo.lookup("198.51.100.7".parse().unwrap()).unwrap();
        assert_eq!(hosting.anonymizer, Some(Anonymizer::Hosting));
        let cell = geo.lookup("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(cell.connection_type.as_deref(), Some("Cellular"));
        assert_eq!(cell.network_kind(), "Cellular");
        let vpn = geo.lookup("203.0.113.7".parse().unwrap()).unwrap();
        assert_eq!(
            vpn.anonymizer,
            Some(Anonymizer::Vpn),
            "the operator's list says VPN"
        );
    }

    #[test]
    fn without_a_database_nothing_is_known() {
        let geo = GeoIp::default();
        assert!(!geo.is_configured());
        assert_eq!(geo.lookup("192.0.2.9".parse().unwrap()), None);
    }
}
