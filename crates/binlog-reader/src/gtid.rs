//! GTID positions of both server families, as the reader tracks them transaction by transaction.
//!
//! * MariaDB: a GTID is `domain-server-seq`; the replication position is a *list* with the last
//!   GTID of each domain (`0-1-23,1-2-5`), which is what `@slave_connect_state` takes.
//! * MySQL: a GTID is `uuid[:tag]:n`; the position is a *set* of intervals per `(uuid, tag)`
//!   (`uuid:1-5:7,uuid:tag:1-3`), which `COM_BINLOG_DUMP_GTID` takes.
//!
//! Both are updated only at transaction boundaries, after the transaction's commit event, so a
//! position always means "everything up to and including these transactions".

use std::collections::BTreeMap;
use std::fmt;

use mysql_common::packets::{GnoInterval, Sid, Tag};

/// Error parsing a GTID position.
#[derive(Debug, thiserror::Error)]
#[error("invalid GTID position {text:?}: {problem}")]
pub struct GtidParseError {
    text: String,
    problem: &'static str,
}

fn perr(text: &str, problem: &'static str) -> GtidParseError {
    GtidParseError {
        text: text.to_string(),
        problem,
    }
}

/// A MariaDB GTID list: per replication domain, the last GTID (server id and sequence number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MariadbGtidList {
    domains: BTreeMap<u32, (u32, u64)>,
}

impl MariadbGtidList {
    /// Parses `0-1-23,1-2-5` (empty text is the empty list).
    pub fn parse(text: &str) -> Result<Self, GtidParseError> {
        let mut domains = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.split('-');
            let (Some(d), Some(s), Some(n), None) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(perr(text, "expected domain-server-seq"));
            };
            let d = d.parse().map_err(|_| perr(text, "bad domain id"))?;
            let s = s.parse().map_err(|_| perr(text, "bad server id"))?;
            let n = n.parse().map_err(|_| perr(text, "bad sequence number"))?;
            domains.insert(d, (s, n));
        }
        Ok(MariadbGtidList { domains })
    }

    /// Records that transaction `domain-server-seq` committed.
    pub fn update(&mut self, domain: u32, server: u32, seq: u64) {
        self.domains.insert(domain, (server, seq));
    }

    /// Parses `@@gtid_binlog_state`, which may list several servers per domain, keeping the
    /// highest sequence number of each domain.
    pub fn parse_state(text: &str) -> Result<Self, GtidParseError> {
        let mut out = MariadbGtidList::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let one = MariadbGtidList::parse(part)?;
            for (d, (s, n)) in one.domains {
                match out.domains.get(&d) {
                    Some((_, m)) if *m >= n => {}
                    _ => {
                        out.domains.insert(d, (s, n));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Why `position` cannot be a position in a binlog whose state is `self`, if it cannot:
    /// a domain the server never wrote, or a sequence number beyond the server's.
    pub fn missing_from(&self, position: &MariadbGtidList) -> Option<String> {
        for (d, (s, n)) in &position.domains {
            match self.domains.get(d) {
                None => return Some(format!("domain {d} (GTID {d}-{s}-{n}) is not in the source's binlog state {self}")),
                Some((_, max)) if n > max => {
                    return Some(format!("GTID {d}-{s}-{n} is beyond the source's last GTID in domain {d} ({d}-{}-{max})", self.domains[d].0))
                }
                _ => {}
            }
        }
        None
    }

    /// Whether no domain has a GTID yet.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

impl fmt::Display for MariadbGtidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (d, (s, n))) in self.domains.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

/// A MySQL GTID set: per `(uuid, tag)`, sorted disjoint intervals `[start, end)` of transaction
/// numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MysqlGtidSet {
    /// Key: (lower-case uuid text, tag or empty).
    sids: BTreeMap<(String, String), Vec<(u64, u64)>>,
}

impl MysqlGtidSet {
    /// Parses MySQL's text form, e.g. `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:11,uuid:tag:1-3`.
    pub fn parse(text: &str) -> Result<Self, GtidParseError> {
        let mut set = MysqlGtidSet::default();
        for part in text.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let mut it = part.split(':');
            let uuid = it.next().unwrap_or_default().trim().to_ascii_lowercase();
            if parse_uuid(&uuid).is_none() {
                return Err(perr(text, "bad uuid"));
            }
            let mut tag = String::new();
            for item in it {
                let item = item.trim();
                if item.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    let (a, b) = match item.split_once('-') {
                        Some((a, b)) => (a, b),
                        None => (item, item),
                    };
                    let a: u64 = a.parse().map_err(|_| perr(text, "bad interval"))?;
                    let b: u64 = b.parse().map_err(|_| perr(text, "bad interval"))?;
                    if a == 0 || b < a {
                        return Err(perr(text, "bad interval"));
                    }
                    set.add_interval(&uuid, &tag, a, b + 1);
                } else {
                    Tag::new(item.to_string()).map_err(|_| perr(text, "bad tag"))?;
                    tag = item.to_ascii_lowercase();
                }
            }
        }
        Ok(set)
    }

    fn add_interval(&mut self, uuid: &str, tag: &str, start: u64, end: u64) {
        let ivs = self
            .sids
            .entry((uuid.to_string(), tag.to_string()))
            .or_default();
        ivs.push((start, end));
        ivs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ivs.len());
        for &(s, e) in ivs.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *ivs = merged;
    }

    /// Records that transaction `uuid[:tag]:gno` committed.
    pub fn add(&mut self, uuid: &str, tag: &str, gno: u64) {
        // Fast path: the next number of the last interval (the common case while streaming).
        if let Some(ivs) = self.sids.get_mut(&(uuid.to_string(), tag.to_string())) {
            if let Some(last) = ivs.last_mut() {
                if last.1 == gno {
                    last.1 += 1;
                    return;
                }
            }
        }
        self.add_interval(uuid, tag, gno, gno + 1);
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.sids.is_empty()
    }

    /// The set in the form `COM_BINLOG_DUMP_GTID` takes.
    pub fn to_sids(&self) -> Vec<Sid<'static>> {
        self.sids
            .iter()
            .filter_map(|((uuid, tag), ivs)| {
                let mut sid = Sid::new(parse_uuid(uuid)?)
                    .with_intervals(ivs.iter().map(|&(s, e)| GnoInterval::new(s, e)).collect());
                if !tag.is_empty() {
                    sid = sid.with_tag(Tag::new(tag.clone()).ok()?);
                }
                Some(sid)
            })
            .collect()
    }
}

impl fmt::Display for MysqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut prev_uuid: Option<&str> = None;
        for ((uuid, tag), ivs) in &self.sids {
            if prev_uuid == Some(uuid.as_str()) {
                // Same uuid, another tag: MySQL continues the element.
            } else {
                if prev_uuid.is_some() {
                    f.write_str(",")?;
                }
                f.write_str(uuid)?;
                prev_uuid = Some(uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for &(s, e) in ivs {
                if e - 1 == s {
                    write!(f, ":{s}")?;
                } else {
                    write!(f, ":{s}-{}", e - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Parses a textual uuid (with dashes) into its 16 bytes.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Formats 16 uuid bytes as lower-case text with dashes.
pub fn format_uuid(b: &[u8; 16]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// The GTID position of either family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidPosition {
    /// MariaDB GTID list.
    Mariadb(MariadbGtidList),
    /// MySQL GTID set.
    Mysql(MysqlGtidSet),
}

impl GtidPosition {
    /// Whether no GTID is recorded.
    pub fn is_empty(&self) -> bool {
        match self {
            GtidPosition::Mariadb(l) => l.is_empty(),
            GtidPosition::Mysql(s) => s.is_empty(),
        }
    }
}

impl fmt::Display for GtidPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidPosition::Mariadb(l) => l.fmt(f),
            GtidPosition::Mysql(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_lists_round_trip_and_update_per_domain() {
        let mut l = MariadbGtidList::parse("0-1-23, 1-2-5").unwrap();
        assert_eq!(l.to_string(), "0-1-23,1-2-5");
        l.update(0, 1, 24);
        l.update(3, 9, 1);
        assert_eq!(l.to_string(), "0-1-24,1-2-5,3-9-1");
        assert!(MariadbGtidList::parse("").unwrap().is_empty());
        assert!(MariadbGtidList::parse("0-1").is_err());
        assert!(MariadbGtidList::parse("a-1-2").is_err());
    }

    #[test]
    fn positions_are_checked_against_the_binlog_state() {
        let state = MariadbGtidList::parse_state("0-1-100,0-2-50,3-1-7").unwrap();
        assert_eq!(state.to_string(), "0-1-100,3-1-7");
        assert!(state
            .missing_from(&MariadbGtidList::parse("0-1-99,3-1-7").unwrap())
            .is_none());
        assert!(state
            .missing_from(&MariadbGtidList::parse("0-2-40").unwrap())
            .is_none());
        assert!(state
            .missing_from(&MariadbGtidList::parse("0-1-1,4242-4242-99").unwrap())
            .unwrap()
            .contains("domain 4242"));
        assert!(state
            .missing_from(&MariadbGtidList::parse("0-1-101").unwrap())
            .unwrap()
            .contains("beyond"));
    }

    #[test]
    fn mysql_sets_parse_merge_and_print_like_the_server() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let mut s =
            MysqlGtidSet::parse(&format!("{}:1-5:7, {u}:tag_a:1-3", u.to_uppercase())).unwrap();
        assert_eq!(s.to_string(), format!("{u}:1-5:7:tag_a:1-3"));
        s.add(u, "", 6);
        assert_eq!(s.to_string(), format!("{u}:1-7:tag_a:1-3"));
        s.add(u, "tag_a", 4);
        s.add(u, "", 9);
        assert_eq!(s.to_string(), format!("{u}:1-7:9:tag_a:1-4"));
        let sids = s.to_sids();
        assert_eq!(sids.len(), 2);
        assert_eq!(sids[0].intervals().len(), 2);
        assert_eq!(
            sids[0].intervals()[0].end(),
            8,
            "intervals are end-exclusive on the wire"
        );
        assert!(MysqlGtidSet::parse("nope:1-2").is_err());
        assert!(MysqlGtidSet::parse(&format!("{u}:5-2")).is_err());
    }

    #[test]
    fn uuids_round_trip() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert_eq!(format_uuid(&parse_uuid(u).unwrap()), u);
    }
}
