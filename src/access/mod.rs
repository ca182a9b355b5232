//! Who the client is and what it may do: API keys as credentials, their
//! scopes, trusted reverse proxies, and which token bucket and limit a
//! request is charged to.
//!
//! It owns the key set (loaded from `--api-keys` at start and on SIGHUP),
//! the decision "anonymous, a known key, or 401", scope checks (403), and
//! the choice of bucket. It does not own the buckets (`crate::access::ratelimit`),
//! the forwarding fields' syntax (`crate::http::forwarded`), or which route
//! needs which scope (`crate::routes`).
//!
//! # Threats and answers
//! - *Rotating invented keys to get fresh buckets*: without a key file the
//!   `X-API-Key` field is ignored and the client address pays; with one, only
//!   a key in the file chooses a bucket and any other key is a 401.
//! - *Learning a key by timing*: keys are kept only as a SipHash-2-4-128 of
//!   the key under a per-process secret; a presented key is hashed the same
//!   way and compared in constant time (`subtle`). The map lookup that finds
//!   the candidate depends only on that secret-keyed hash.
//! - *Forging `X-Forwarded-For`*: only peers in `--trusted-proxy` ranges are
//!   believed, and then only the rightmost untrusted entry.
//! - *Throttling the operator's own benchmark*: anonymous requests from a
//!   loopback peer that is not a trusted proxy are not limited unless
//!   `--rate-limit-loopback`.

mod cidr;
pub mod destinations;
pub mod keyfile;
pub mod ratelimit;

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::path::PathBuf;

use siphasher::sip128::{Hasher128, SipHasher24};
use subtle::ConstantTimeEq;

pub use cidr::Cidr;

/// SHA-256 of a key's name, truncated to 128 bits: stable across restarts
/// and key-file reloads (unlike the key's own hash, keyed per process), so
/// records may name a key's owner by it.
pub fn name_digest(name: &str) -> [u8; 16] {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(name.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes
}
pub use keyfile::{KeyFileError, Scope};

use crate::access::ratelimit::{ClientKey, Limit, RateLimitConfig};
use crate::http::forwarded;
use crate::http::parse::Request;
use keyfile::{KeySpec, Scopes};

/// The access settings, from `Config`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// `--api-keys`: the key file, read at start and on SIGHUP.
    pub api_keys: Option<PathBuf>,
    /// `--protect-steps`: `/next` and `/previous` need a key with `step`.
    pub protect_steps: bool,
    /// `--trusted-proxy`: peers whose forwarding fields are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `--rate-limit-loopback`: limit anonymous loopback peers too.
    pub rate_limit_loopback: bool,
}

/// Why a request may not go on: the caller is not who it says, or may not
/// do this. `crate::error` gives each its status (401 or 403).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// An `X-API-Key` that is not in the key file.
    UnknownKey,
    /// No key, where one with `scope` is needed.
    KeyRequired { scope: Scope },
    /// A known key without `scope`, where it is needed.
    ScopeMissing { scope: Scope },
}

/// A key in the loaded set: an index, and the generation of the set it
/// indexes, so a reply answered after a reload never names another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyId {
    index: usize,
    generation: u64,
}

/// Who sent a request, as far as fibd can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    pub addr: IpAddr,
    /// The API key it presented, when that key is known.
    pub key: Option<KeyId>,
    /// The bucket it is charged to.
    pub bucket: ClientKey,
    /// The limit it is charged under; `None` when it is not limited.
    pub limit: Option<Limit>,
}

/// One loaded key. The key itself is not kept, only its hash.
struct KeyEntry {
    name: String,
    /// [`name_digest`] of the name, computed once per load.
    name_digest: [u8; 16],
    hash: [u8; 16],
    limit: Option<Limit>,
    scopes: Scopes,
    /// For /metrics; carried over a reload by name.
    requests: u64,
    rate_limited: u64,
}

pub struct Access {
    config: AccessConfig,
    rate_limit: RateLimitConfig,
    /// Keys the key hashes; random per process, so nobody can relate a hash
    /// (or its timing) to a key.
    secret: [u8; 16],
    keys: Vec<KeyEntry>,
    /// The first half of each key's hash, to its entry.
    by_hash: HashMap<u64, usize>,
    /// Counts key sets installed: a `KeyId` of another generation is stale.
    generation: u64,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("config", &self.config)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Loads the key file, if any; an error here stops the start-up.
    pub fn new(
        config: AccessConfig,
        rate_limit: RateLimitConfig,
        secret: [u8; 16],
    ) -> Result<Access, KeyFileError> {
        let mut access = Access {
            config,
            rate_limit,
            secret,
            keys: Vec::new(),
            by_hash: HashMap::new(),
            generation: 0,
        };
        if let Some(path) = &access.config.api_keys {
            let specs = keyfile::read(path)?;
            access.install(specs);
        }
        Ok(access)
    }

    /// SIGHUP: reads the key file again. Buckets of unchanged keys stay (a
    /// bucket follows the key's hash), and so do their counters; a file that
    /// cannot be read or parsed is logged at error and the old set kept.
    pub fn reload(&mut self) {
        let Some(path) = self.config.api_keys.clone() else {
            log::info!("SIGHUP: no --api-keys file to reload");
            return;
        };
        match keyfile::read(&path) {
            Ok(specs) => {
                let (added, removed) = self.install(specs);
                log::info!(
                    "reloaded {} API keys from {}; added [{}], removed [{}]",
                    self.keys.len(),
                    path.display(),
                    added.join(", "),
                    removed.join(", "),
                );
            }
            Err(e) => log::error!(
                "cannot reload the API keys from {}: {e}; keeping the {} keys loaded",
                path.display(),
                self.keys.len()
            ),
        }
    }

    /// Replaces the key set; returns the names added and removed.
    fn install(&mut self, specs: Vec<KeySpec>) -> (Vec<String>, Vec<String>) {
        self.generation += 1;
        let mut old: HashMap<String, KeyEntry> =
            self.keys.drain(..).map(|e| (e.name.clone(), e)).collect();
        let mut added = Vec::new();
        for spec in specs {
            let previous = old.remove(&spec.name);
            if previous.is_none() {
                added.push(spec.name.clone());
            }
            let (requests, rate_limited) =
                previous.map_or((0, 0), |p| (p.requests, p.rate_limited));
            self.keys.push(KeyEntry {
                name_digest: name_digest(&spec.name),
                hash: self.hash(&spec.key),
                limit: self.key_limit(&spec),
                scopes: spec.scopes,
                name: spec.name,
                requests,
                rate_limited,
            });
        }
        self.by_hash = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, e)| (hash_prefix(&e.hash), i))
            .collect();
        let mut removed: Vec<String> = old.into_keys().collect();
        removed.sort();
        (added, removed)
    }

    /// `rate=0` means no limit; what the line leaves out comes from the
    /// server's own limits (none if `--rate-limit 0`).
    fn key_limit(&self, spec: &KeySpec) -> Option<Limit> {
        let default = self.rate_limit.default_limit();
        let rate_per_sec = match spec.rate_per_sec {
            Some(0) => return None,
            Some(rate) => rate,
            None => default?.rate_per_sec,
        };
        Some(Limit {
            rate_per_sec,
            burst: spec.burst.unwrap_or(self.rate_limit.burst),
        })
    }

    fn hash(&self, key: &[u8]) -> [u8; 16] {
        let mut hasher = SipHasher24::new_with_key(&self.secret);
        hasher.write(key);
        hasher.finish128().as_bytes()
    }

    /// Who sent `request` over a connection from `peer`: the client address
    /// (see `http::forwarded`), the key, and the bucket. A key that is not in
    /// the file is a 401; without a file, keys are ignored.
    pub fn identify(&self, peer: IpAddr, request: &Request<'_>) -> Result<Caller, Denied> {
        let peer = cidr::canonical(peer);
        let addr = self.client_address(peer, request);
        if let (Some(_), Some(presented)) = (&self.config.api_keys, request.api_key) {
            let hash = self.hash(presented);
            let found = self
                .by_hash
                .get(&hash_prefix(&hash))
                .and_then(|&i| Some((i, self.keys.get(i)?)))
                .filter(|(_, entry)| bool::from(entry.hash.ct_eq(&hash)));
            let Some((i, entry)) = found else {
                return Err(Denied::UnknownKey);
            };
            return Ok(Caller {
                addr,
                key: Some(KeyId {
                    index: i,
                    generation: self.generation,
                }),
                bucket: ClientKey::ApiKey(hash),
                limit: entry.limit,
            });
        }
        let exempt =
            !self.config.rate_limit_loopback && peer.is_loopback() && !self.is_trusted(peer);
        Ok(Caller {
            addr,
            key: None,
            bucket: ClientKey::ip(addr),
            limit: if exempt {
                None
            } else {
                self.rate_limit.default_limit()
            },
        })
    }

    /// The client's address: the peer's, or the one a trusted proxy forwarded
    /// (see `http::forwarded`).
    pub fn client_address(&self, peer: IpAddr, request: &Request<'_>) -> IpAddr {
        cidr::canonical(forwarded::client_address(
            cidr::canonical(peer),
            request.forwarded,
            request.x_forwarded_for,
            |ip| self.is_trusted(ip),
        ))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// 401 without a key, 403 with one that lacks `scope`, when the scope is
    /// enforced (`--protect-steps` for `step`).
    pub fn authorize(&self, caller: &Caller, scope: Scope) -> Result<(), Denied> {
        let enforced = match scope {
            Scope::Step => self.config.protect_steps,
        };
        if !enforced {
            return Ok(());
        }
        match caller.key.and_then(|key| self.entry(key)) {
            None => Err(Denied::KeyRequired { scope }),
            Some(entry) if entry.scopes.contains(scope) => Ok(()),
            Some(_) => Err(Denied::ScopeMissing { scope }),
        }
    }

    /// The loaded key `key` names, if the set it was issued from is still
    /// the loaded one.
    fn entry(&self, key: KeyId) -> Option<&KeyEntry> {
        self.keys
            .get(key.index)
            .filter(|_| key.generation == self.generation)
    }

    /// The key's name, for logs; never the key ("?" after a reload).
    pub fn key_name(&self, key: KeyId) -> &str {
        self.entry(key).map_or("?", |e| e.name.as_str())
    }

    /// [`name_digest`] of the key's name (of "?" after a reload), kept so a
    /// request does not hash it again.
    pub fn key_name_digest(&self, key: KeyId) -> [u8; 16] {
        self.entry(key)
            .map_or_else(|| name_digest("?"), |e| e.name_digest)
    }

    /// Counts a request made with `key`, for /metrics.
    pub fn count(&mut self, key: KeyId, rate_limited: bool) {
        if let Some(entry) = self
            .keys
            .get_mut(key.index)
            .filter(|_| key.generation == self.generation)
        {
            entry.requests += 1;
            entry.rate_limited += u64::from(rate_limited);
        }
    }

    /// (name, requests, rate-limited requests) per loaded key.
    pub fn key_counts(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.keys
            .iter()
            .map(|e| (e.name.as_str(), e.requests, e.rate_limited))
    }
}

fn hash_prefix(hash: &[u8; 16]) -> u64 {
    let mut half = [0u8; 8];
    half.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{self, Limits, Parsed};

    const KEY_A: &str = "alice-key-0123456789";
    const KEY_B: &str = "bob-key-0123456789ab";

    fn access(config: AccessConfig, file: &str) -> Access {
        access_under(config, RateLimitConfig::default(), file)
    }

    /// Installs `file` as if it had been read from `config.api_keys`.
    fn access_under(config: AccessConfig, rate_limit: RateLimitConfig, file: &str) -> Access {
        let mut access = Access::new(AccessConfig::default(), rate_limit, [9; 16]).unwrap();
        access.config = config;
        access.install(keyfile::parse(file).unwrap());
        access
    }

    fn with_keys() -> AccessConfig {
        AccessConfig {
            api_keys: Some(PathBuf::from("unused: installed by the test")),
            ..AccessConfig::default()
        }
    }

    /// Parses a request with these extra header lines and identifies it.
    fn identify(access: &Access, peer: &str, headers: &str) -> Result<Caller, Denied> {
        let raw = format!("GET /current HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        let Ok(Parsed::Complete { request, .. }) = parse::parse(raw.as_bytes(), &Limits::default())
        else {
            panic!("test request did not parse: {raw:?}");
        };
        access.identify(peer.parse().unwrap(), &request)
    }

    fn default_limit() -> Option<Limit> {
        RateLimitConfig::default().default_limit()
    }

    #[test]
    fn without_a_key_file_keys_are_ignored() {
        let access = access(AccessConfig::default(), "");
        let plain = identify(&access, "192.0.2.1", "").unwrap();
        let keyed = identify(&access, "192.0.2.1", "X-API-Key: anything-at-all\r\n").unwrap();
        assert_eq!(plain, keyed);
        assert_eq!(plain.bucket, ClientKey::ip("192.0.2.1".parse().unwrap()));
        assert_eq!(plain.limit, default_limit());
    }

    #[test]
    fn known_keys_choose_their_bucket_and_limit_unknown_ones_are_refused() {
        let file = format!("alice {KEY_A} rate=7 burst=9\nbob {KEY_B} rate=0\n");
        let access = access(with_keys(), &file);
        let alice = identify(&access, "192.0.2.1", &format!("X-API-Key: {KEY_A}\r\n")).unwrap();
        let again = identify(&access, "198.51.100.2", &format!("X-API-Key: {KEY_A}\r\n")).unwrap();
        assert_eq!(alice.bucket, again.bucket, "the key, not the address, pays");
        assert!(matches!(alice.bucket, ClientKey::ApiKey(_)));
        assert_eq!(
            alice.limit,
            Some(Limit {
                rate_per_sec: 7,
                burst: 9
            })
        );
        assert_eq!(access.key_name(alice.key.unwrap()), "alice");
        let bob = identify(&access, "192.0.2.1", &format!("X-API-Key: {KEY_B}\r\n")).unwrap();
        assert_eq!(bob.limit, None, "rate=0 is no limit");
        for unknown in ["nobody-key-0123456789", "alice-key-012345678", "", "alice"] {
            assert_eq!(
                identify(&access, "192.0.2.1", &format!("X-API-Key: {unknown}\r\n")),
                Err(Denied::UnknownKey),
                "{unknown:?}"
            );
        }
        let anonymous = identify(&access, "192.0.2.1", "").unwrap();
        assert_eq!((anonymous.key, anonymous.limit), (None, default_limit()));
    }

    #[test]
    fn a_reload_keeps_unchanged_keys_and_their_counts() {
        let mut access = access(with_keys(), &format!("alice {KEY_A}\n"));
        let before = identify(&access, "192.0.2.1", &format!("X-API-Key: {KEY_A}\r\n")).unwrap();
        access.count(before.key.unwrap(), true);
        let (added, removed) = access
            .install(keyfile::parse(&format!("bob {KEY_B}\nalice {KEY_A} rate=3\n")).unwrap());
        assert_eq!((added, removed), (vec!["bob".to_owned()], vec![]));
        let after = identify(&access, "192.0.2.1", &format!("X-API-Key: {KEY_A}\r\n")).unwrap();
        assert_eq!(after.bucket, before.bucket);
        assert_eq!(after.limit.map(|l| l.rate_per_sec), Some(3));
        let counts: Vec<_> = access.key_counts().collect();
        assert_eq!(counts, vec![("bob", 0, 0), ("alice", 1, 1)]);
        let (_, removed) = access.install(keyfile::parse(&format!("bob {KEY_B}\n")).unwrap());
        assert_eq!(removed, vec!["alice".to_owned()]);
        assert_eq!(
            identify(&access, "192.0.2.1", &format!("X-API-Key: {KEY_A}\r\n")),
            Err(Denied::UnknownKey)
        );
    }

    #[test]
    fn scopes_under_protect_steps() {
        let file = format!("alice {KEY_A} scopes=step\nbob {KEY_B}\n");
        let open = access(with_keys(), &file);
        let protected = access(
            AccessConfig {
                protect_steps: true,
                ..with_keys()
            },
            &file,
        );
        let alice = format!("X-API-Key: {KEY_A}\r\n");
        let bob = format!("X-API-Key: {KEY_B}\r\n");
        for headers in ["", alice.as_str(), bob.as_str()] {
            let caller = identify(&open, "192.0.2.1", headers).unwrap();
            assert_eq!(open.authorize(&caller, Scope::Step), Ok(()));
        }
        let step = Scope::Step;
        let caller = |h: &str| identify(&protected, "192.0.2.1", h).unwrap();
        assert_eq!(
            protected.authorize(&caller(""), step),
            Err(Denied::KeyRequired { scope: step })
        );
        assert_eq!(protected.authorize(&caller(&alice), step), Ok(()));
        assert_eq!(
            protected.authorize(&caller(&bob), step),
            Err(Denied::ScopeMissing { scope: step })
        );
    }

    #[test]
    fn loopback_peers_are_exempt_unless_trusted_or_asked() {
        let proxies = vec![Cidr::parse("127.0.0.1").unwrap()];
        let plain = access(AccessConfig::default(), "");
        let limited = access(
            AccessConfig {
                rate_limit_loopback: true,
                ..AccessConfig::default()
            },
            "",
        );
        let proxied = access(
            AccessConfig {
                trusted_proxies: proxies,
                ..AccessConfig::default()
            },
            "",
        );
        let limit = |a: &Access, peer: &str, h: &str| identify(a, peer, h).unwrap().limit;
        assert_eq!(limit(&plain, "127.0.0.1", ""), None);
        assert_eq!(limit(&plain, "::1", ""), None);
        assert_eq!(limit(&plain, "::ffff:127.0.0.9", ""), None);
        assert_eq!(limit(&plain, "192.0.2.1", ""), default_limit());
        assert_eq!(limit(&limited, "127.0.0.1", ""), default_limit());
        // The proxy on loopback is trusted: its clients are limited.
        assert_eq!(limit(&proxied, "127.0.0.1", ""), default_limit());
        let forwarded =
            identify(&proxied, "127.0.0.1", "X-Forwarded-For: 203.0.113.5\r\n").unwrap();
        assert_eq!(forwarded.addr, "203.0.113.5".parse::<IpAddr>().unwrap());
        assert_eq!(forwarded.limit, default_limit());
        // Another loopback peer is not the proxy: its header is ignored.
        let direct = identify(&proxied, "127.0.0.2", "X-Forwarded-For: 203.0.113.5\r\n").unwrap();
        assert_eq!(direct.addr, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(direct.limit, None);
    }

    #[test]
    fn key_limits_fall_back_to_the_server_limits() {
        let file = format!("a {KEY_A}\nb {KEY_B} burst=5\n");
        let off = RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        };
        let unlimited = access_under(with_keys(), off, &file);
        let limit = |k: &str| {
            identify(&unlimited, "192.0.2.1", &format!("X-API-Key: {k}\r\n"))
                .unwrap()
                .limit
        };
        assert_eq!(limit(KEY_A), None, "no server limit, none of its own");
        assert_eq!(limit(KEY_B), None);
        let on = access(with_keys(), &file);
        let limit = |k: &str| {
            identify(&on, "192.0.2.1", &format!("X-API-Key: {k}\r\n"))
                .unwrap()
                .limit
        };
        assert_eq!(limit(KEY_A), default_limit());
        assert_eq!(
            limit(KEY_B).map(|l| (l.rate_per_sec, l.burst)),
            Some((5000, 5))
        );
    }
}
