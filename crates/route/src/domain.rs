//! Virtual host selection by `Host`/`:authority`.
//!
//! Envoy's order: exact domain, then suffix wildcards (`*.foo.com`, `*-bar.foo.com`) longest
//! first, then prefix wildcards (`foo.*`) longest first, then `*`. Hosts are compared
//! lowercased. The port is part of the host unless `ignore_port_in_host_matching` is set;
//! Envoy does **not** retry without the port when nothing matches. A wildcard must match at
//! least one character (`*.foo.com` does not match `.foo.com`). A `*` anywhere else is not
//! a wildcard: Envoy treats such a domain as an exact (literal) entry.

use std::collections::HashMap;

use crate::error::{Result, RouteError};

type Bytes = Box<[u8]>;

#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    exact: HashMap<Bytes, usize>,
    /// (wildcard length without `*`, map of suffix → vhost), sorted by length descending.
    suffixes: Vec<(usize, HashMap<Bytes, usize>)>,
    prefixes: Vec<(usize, HashMap<Bytes, usize>)>,
    default: Option<usize>,
    ignore_port: bool,
}

/// Hosts up to this length are lowercased on the stack; longer ones (rare) allocate.
const STACK_HOST: usize = 256;

impl DomainIndex {
    pub(crate) fn new(ignore_port: bool) -> Self {
        Self {
            ignore_port,
            ..Self::default()
        }
    }

    pub(crate) fn insert(&mut self, domain: &str, vhost: usize, field: &str) -> Result<()> {
        let lower = domain.to_ascii_lowercase();
        let dup = || {
            RouteError::invalid(
                field,
                format!(
                    "only unique values for domains are permitted; duplicate entry of domain {lower}"
                ),
            )
        };
        if lower == "*" {
            if self.default.is_some() {
                return Err(RouteError::invalid(
                    field,
                    "only a single wildcard domain is permitted",
                ));
            }
            self.default = Some(vhost);
            return Ok(());
        }
        let (table, key) = if let Some(rest) = lower.strip_prefix('*') {
            (&mut self.suffixes, rest)
        } else if let Some(rest) = lower.strip_suffix('*') {
            (&mut self.prefixes, rest)
        } else {
            return match self.exact.insert(lower.as_bytes().into(), vhost) {
                Some(_) => Err(dup()),
                None => Ok(()),
            };
        };
        let len = key.len();
        let pos = match table.iter().position(|(l, _)| *l <= len) {
            Some(p) if table[p].0 == len => p,
            Some(p) => {
                table.insert(p, (len, HashMap::new()));
                p
            }
            None => {
                table.push((len, HashMap::new()));
                table.len() - 1
            }
        };
        match table[pos].1.insert(key.as_bytes().into(), vhost) {
            Some(_) => Err(dup()),
            None => Ok(()),
        }
    }

    pub(crate) fn find(&self, host: &str) -> Option<usize> {
        // Fast path (as Envoy): only a `*` vhost, the host is irrelevant.
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.default;
        }
        let host = if self.ignore_port {
            strip_port(host)
        } else {
            host
        };
        let mut buf = [0u8; STACK_HOST];
        let heap;
        let lower: &[u8] = if host.len() <= STACK_HOST {
            let b = &mut buf[..host.len()];
            b.copy_from_slice(host.as_bytes());
            b.make_ascii_lowercase();
            b
        } else {
            heap = host.to_ascii_lowercase();
            heap.as_bytes()
        };
        if let Some(v) = self.exact.get(lower) {
            return Some(*v);
        }
        for (len, map) in &self.suffixes {
            // `>=`: the wildcard must cover at least one character.
            if *len >= lower.len() {
                continue;
            }
            if let Some(v) = map.get(&lower[lower.len() - len..]) {
                return Some(*v);
            }
        }
        for (len, map) in &self.prefixes {
            if *len >= lower.len() {
                continue;
            }
            if let Some(v) = map.get(&lower[..*len]) {
                return Some(*v);
            }
        }
        self.default
    }
}

/// Envoy's `HeaderUtility::getPortStart`: the last `:` starts a port if it is not inside an
/// IPv6 literal (i.e. no `]` after it) and what follows is a number.
pub(crate) fn strip_port(host: &str) -> &str {
    let Some(colon) = host.rfind(':') else {
        return host;
    };
    if host.rfind(']').is_some_and(|b| b > colon) {
        return host;
    }
    let port = &host[colon + 1..];
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u32>().is_ok() {
        &host[..colon]
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(domains: &[&str], ignore_port: bool) -> DomainIndex {
        let mut idx = DomainIndex::new(ignore_port);
        for (i, d) in domains.iter().enumerate() {
            idx.insert(d, i, "d").unwrap();
        }
        idx
    }

    #[test]
    fn given_exact_suffix_prefix_and_star_the_most_specific_wins() {
        let idx = index(&["bar.foo.com", "*.foo.com", "foo.*", "*"], false);
        assert_eq!(idx.find("bar.foo.com"), Some(0));
        assert_eq!(idx.find("baz.foo.com"), Some(1));
        assert_eq!(idx.find("foo.org"), Some(2));
        assert_eq!(idx.find("other.net"), Some(3));
    }

    #[test]
    fn suffix_wildcards_beat_prefix_wildcards_even_if_shorter() {
        let idx = index(&["*.com", "foo.bar.*"], false);
        assert_eq!(idx.find("foo.bar.com"), Some(0));
    }

    #[test]
    fn longest_suffix_wins() {
        let idx = index(&["*.foo.com", "*-bar.foo.com"], false);
        assert_eq!(idx.find("baz-bar.foo.com"), Some(1));
        assert_eq!(idx.find("baz.foo.com"), Some(0));
    }

    #[test]
    fn longest_prefix_wins() {
        let idx = index(&["foo.*", "foo.bar.*"], false);
        assert_eq!(idx.find("foo.bar.com"), Some(1));
        assert_eq!(idx.find("foo.baz.com"), Some(0));
    }

    #[test]
    fn wildcard_does_not_match_empty_string() {
        let idx = index(&["*-bar.foo.com", "foo-*"], false);
        assert_eq!(idx.find("-bar.foo.com"), None);
        assert_eq!(idx.find("foo-"), None);
        assert_eq!(idx.find("x-bar.foo.com"), Some(0));
    }

    #[test]
    fn matching_is_case_insensitive() {
        let idx = index(&["Foo.COM", "*.Bar.com"], false);
        assert_eq!(idx.find("FOO.com"), Some(0));
        assert_eq!(idx.find("x.BAR.COM"), Some(1));
    }

    #[test]
    fn port_is_part_of_the_host_by_default() {
        let idx = index(&["foo.com", "foo.com:8080", "*.bar.com"], false);
        assert_eq!(idx.find("foo.com:8080"), Some(1));
        assert_eq!(
            idx.find("foo.com:9090"),
            None,
            "no fallback without the port"
        );
        assert_eq!(idx.find("a.bar.com:80"), None);
    }

    #[test]
    fn ignore_port_in_host_matching_strips_the_request_port_only() {
        let idx = index(&["foo.com", "bar.com:80"], true);
        assert_eq!(idx.find("foo.com:9090"), Some(0));
        assert_eq!(idx.find("bar.com:80"), None, "domains keep their port");
        let idx = index(&["[::1]"], true);
        assert_eq!(idx.find("[::1]:443"), Some(0));
        assert_eq!(idx.find("[::1]"), Some(0));
    }

    #[test]
    fn only_star_short_circuits() {
        let idx = index(&["*"], false);
        assert_eq!(idx.find(""), Some(0));
    }

    #[test]
    fn duplicates_are_rejected_case_insensitively() {
        let mut idx = DomainIndex::new(false);
        idx.insert("foo.com", 0, "a").unwrap();
        assert!(idx.insert("FOO.com", 1, "b").is_err());
        idx.insert("*.x.com", 0, "a").unwrap();
        assert!(idx.insert("*.X.com", 1, "b").is_err());
        idx.insert("*", 0, "a").unwrap();
        assert!(idx.insert("*", 1, "b").is_err());
    }

    #[test]
    fn interior_star_is_a_literal_exact_domain() {
        let idx = index(&["foo.*.com"], false);
        assert_eq!(idx.find("foo.bar.com"), None);
        assert_eq!(idx.find("foo.*.com"), Some(0));
    }

    #[test]
    fn long_hosts_still_match() {
        let long = format!("{}.example.com", "a".repeat(300));
        let idx = index(&["*.example.com"], false);
        assert_eq!(idx.find(&long.to_uppercase()), Some(0));
    }

    #[test]
    fn strip_port_rules() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("a.com:x"), "a.com:x");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
    }
}
