//! Name resolution for the KMS's host, cached: ureq resolves the host before every request,
//! even one that reuses a kept-alive connection, and does so on a new thread whenever a
//! timeout is set, which is about a tenth of a signature's round trip on a local network.
//!
//! Where the lookup runs: an IP address needs none, so it never costs a thread. A host name
//! is looked up on a thread of its own, bounded by the connection timeout, unless the
//! caller forbade threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`): then `getaddrinfo` runs
//! in the caller's thread, bounded only by the system resolver's own timeouts
//! (`resolv.conf`'s `timeout:` and `attempts:`), which no thread-free code can cut short.
//!
//! The addresses are kept for [`TTL`] and forgotten at once when a connection fails, so a KMS
//! that moved (DNS fail-over) is found again by the next attempt. Built on ureq's
//! `unversioned` resolver API, which does not follow semver: Cargo.toml pins ureq's minor
//! version.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long resolved addresses are used before the host is resolved again.
const TTL: Duration = Duration::from_secs(60);

/// The last resolution: the `host:port` it was for, when it was made, the addresses.
type Entry = (String, Instant, ResolvedSocketAddrs);

/// A resolver that remembers its last answer; clones share the memory.
#[derive(Debug, Default, Clone)]
pub(super) struct CachingResolver {
    last: Arc<Mutex<Option<Entry>>>,
    /// Look host names up in the calling thread, never on a thread of our own.
    in_caller_thread: bool,
}

impl CachingResolver {
    /// A resolver; `in_caller_thread`: never create a thread to look a name up.
    pub(super) fn new(in_caller_thread: bool) -> Self {
        Self { last: Arc::default(), in_caller_thread }
    }

    /// Drops the remembered addresses: the next request resolves the host again.
    pub(super) fn forget(&self) {
        *crate::lock(&self.last) = None;
    }

    fn remembered(&self, authority: &str) -> Option<ResolvedSocketAddrs> {
        let last = crate::lock(&self.last);
        match &*last {
            Some((known, at, addrs)) if known == authority && at.elapsed() < TTL => Some(addrs.clone()),
            _ => None,
        }
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        if let Some(addrs) = self.remembered(&authority) {
            return Ok(addrs);
        }
        // ureq's resolver runs the lookup on a thread of its own unless no timeout is set.
        let timeout = if self.in_caller_thread || is_ip_address(uri) {
            NextTimeout { after: ureq::unversioned::transport::time::Duration::NotHappening, ..timeout }
        } else {
            timeout
        };
        let addrs = DefaultResolver::default().resolve(uri, config, timeout)?;
        *crate::lock(&self.last) = Some((authority, Instant::now(), addrs.clone()));
        Ok(addrs)
    }
}

/// Whether the URI's host is an IP address (`127.0.0.1`, `[::1]`): nothing to look up.
fn is_ip_address(uri: &ureq::http::Uri) -> bool {
    let host = uri.host().unwrap_or_default();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(resolver: &CachingResolver, url: &str) -> Result<ResolvedSocketAddrs, ureq::Error> {
        resolve_within(resolver, url, ureq::unversioned::transport::time::Duration::NotHappening)
    }

    fn resolve_within(
        resolver: &CachingResolver,
        url: &str,
        after: ureq::unversioned::transport::time::Duration,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let config = ureq::config::Config::default();
        let timeout = NextTimeout { after, reason: ureq::Timeout::Resolve, per_read: None, per_write: None };
        resolver.resolve(&url.parse().unwrap(), &config, timeout)
    }

    #[test]
    fn an_answer_is_reused_for_the_same_host_only_and_until_forgotten() {
        let resolver = CachingResolver::new(false);
        let first = resolve(&resolver, "http://localhost:9998/kmip").unwrap();
        assert!(first.iter().all(|a| a.ip().is_loopback() && a.port() == 9998));
        // Plant a different answer: a cached lookup returns it, a fresh one does not.
        let planted: ResolvedSocketAddrs = {
            let mut a = resolver.empty();
            a.push("192.0.2.7:9998".parse().unwrap());
            a
        };
        resolver.last.lock().unwrap().as_mut().unwrap().2 = planted.clone();
        assert_eq!(resolve(&resolver, "http://localhost:9998/kmip/2_1").unwrap(), planted);
        let other_port = resolve(&resolver, "http://localhost:9999/kmip").unwrap();
        assert!(other_port.iter().all(|a| a.port() == 9999), "another host:port is resolved anew");
        resolver.last.lock().unwrap().as_mut().unwrap().2 = planted.clone();
        resolver.forget();
        assert_ne!(resolve(&resolver, "http://localhost:9999/kmip").unwrap(), planted);
    }

    #[test]
    fn ip_addresses_need_no_lookup() {
        for (url, ip) in [
            ("http://127.0.0.1:9998/", true),
            ("https://[::1]:9998/kmip", true),
            ("https://localhost:9998/", false),
            ("https://kms.example.com/", false),
            ("https://[fe80::1%25eth0]:9998/", false),
        ] {
            assert_eq!(is_ip_address(&url.parse().unwrap()), ip, "{url}");
        }
    }

    #[test]
    fn an_old_answer_is_not_reused() {
        let resolver = CachingResolver::new(false);
        resolve(&resolver, "http://127.0.0.1:9998/").unwrap();
        let planted: ResolvedSocketAddrs = {
            let mut a = resolver.empty();
            a.push("192.0.2.7:9998".parse().unwrap());
            a
        };
        {
            let mut last = resolver.last.lock().unwrap();
            let entry = last.as_mut().unwrap();
            entry.2 = planted.clone();
            entry.1 = Instant::now().checked_sub(TTL).expect("the monotonic clock is older than a minute");
        }
        assert_ne!(resolve(&resolver, "http://127.0.0.1:9998/").unwrap(), planted);
    }
}
