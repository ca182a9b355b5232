//! The API key file: its format, read with a size bound and parsed into
//! [`KeySpec`]s, with errors that name the line. Sans-IO except
//! [`read`], which only opens and reads the file.
//!
//! # Format
//! One key per line, fields separated by spaces or tabs:
//!
//! ```text
//! # NAME   KEY                                    [rate=N] [burst=N] [scopes=S,...]
//! ci-bot   3q9Zk1vO2Hc8Xp7LrTn4WmYs6Bd5Fg0J       rate=100 burst=200
//! stepper  Yt9xVb2Nc4Mz6Lk8Jh0Gf1Ds3Ap5Qw7Er      scopes=step
//! ```
//!
//! - `NAME`: 1 to 64 of `A-Z a-z 0-9 _ . -`, unique. It is what logs and
//!   metrics show, never the key.
//! - `KEY`: 16 to 256 of `A-Z a-z 0-9 - . _ ~ + / =` (what `openssl rand
//!   -base64 32` or `-hex 32` prints), unique.
//! - `rate=N`: tokens per second for this key, 0 for no limit; default the
//!   server's `--rate-limit`. `burst=N`: its bucket size; default
//!   `--rate-burst`.
//! - `scopes=`: what the key may do beyond reading, comma-separated; today
//!   only `step` (`/next` and `/previous` under `--protect-steps`).
//! - `#` begins a comment, at the start of a line or of a field; blank
//!   lines are ignored.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// The file is read on the event loop (at start and on SIGHUP), so it is
/// kept small: a thousand keys fit in a tenth of this.
pub const FILE_BYTES_MAX: u64 = 1 << 20;
/// Each key is a row in /metrics and a bucket that never needs evicting.
pub const KEYS_MAX: usize = 1000;
const NAME_BYTES_MAX: usize = 64;
const KEY_BYTES_MIN: usize = 16;
const KEY_BYTES_MAX: usize = 256;
const RATE_MAX: u32 = 10_000_000;
const BURST_MAX: u32 = 100_000_000;

/// What a key may do beyond reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/next` and `/previous`, when `--protect-steps` is on.
    Step,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Step => "step",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Step => 1,
        }
    }

    fn parse(text: &str) -> Option<Scope> {
        [Scope::Step].into_iter().find(|s| s.name() == text)
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }
}

/// One line of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub key: Vec<u8>,
    pub rate_per_sec: Option<u32>,
    pub burst: Option<u32>,
    pub scopes: Scopes,
}

/// Never shows the key.
impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("name", &self.name)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("burst", &self.burst)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Why a key file was refused. Never quotes a key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyFileError {
    Unreadable(String),
    TooLarge,
    TooManyKeys,
    Line { line: usize, problem: &'static str },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Unreadable(e) => write!(f, "cannot read it: {e}"),
            KeyFileError::TooLarge => write!(f, "it is larger than {FILE_BYTES_MAX} bytes"),
            KeyFileError::TooManyKeys => write!(f, "it has more than {KEYS_MAX} keys"),
            KeyFileError::Line { line, problem } => write!(f, "line {line}: {problem}"),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// Reads at most [`FILE_BYTES_MAX`] bytes of `path` and parses them.
pub fn read(path: &Path) -> Result<Vec<KeySpec>, KeyFileError> {
    let unreadable = |e: std::io::Error| KeyFileError::Unreadable(e.to_string());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(KeyFileError::TooLarge);
    }
    parse(&text)
}

/// Parses the whole file; the first problem found is reported.
pub fn parse(text: &str) -> Result<Vec<KeySpec>, KeyFileError> {
    let mut specs: Vec<KeySpec> = Vec::new();
    // Sets, not scans of `specs`: a file of KEYS_MAX keys is parsed on the
    // event loop at SIGHUP, and pairwise checks would be half a million
    // comparisons.
    let mut names: HashSet<String> = HashSet::new();
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |problem| KeyFileError::Line {
            line: i + 1,
            problem,
        };
        let Some(spec) = parse_line(line).map_err(at)? else {
            continue;
        };
        if names.contains(&spec.name) {
            return Err(at("this name is already used by an earlier key"));
        }
        if keys.contains(&spec.key) {
            return Err(at("this key is already listed on an earlier line"));
        }
        if specs.len() == KEYS_MAX {
            return Err(KeyFileError::TooManyKeys);
        }
        names.insert(spec.name.clone());
        keys.insert(spec.key.clone());
        specs.push(spec);
    }
    Ok(specs)
}

/// `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<KeySpec>, &'static str> {
    let mut fields = line
        .split([' ', '\t'])
        .filter(|f| !f.is_empty())
        .take_while(|f| !f.starts_with('#'));
    let Some(name) = fields.next() else {
        return Ok(None);
    };
    if name.len() > NAME_BYTES_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("the name must be 1 to 64 of A-Z a-z 0-9 _ . -");
    }
    let key = fields.next().ok_or("a name must be followed by its key")?;
    if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len())
        || !key.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
    {
        return Err("the key must be 16 to 256 of A-Z a-z 0-9 - . _ ~ + / =");
    }
    let mut spec = KeySpec {
        name: name.to_owned(),
        key: key.as_bytes().to_vec(),
        rate_per_sec: None,
        burst: None,
        scopes: Scopes::default(),
    };
    for option in fields {
        match option.split_once('=') {
            Some(("rate", value)) if spec.rate_per_sec.is_none() => {
                spec.rate_per_sec = Some(
                    number(value, 0, RATE_MAX)
                        .ok_or("rate must be tokens per second from 0 (no limit) to 10000000")?,
                );
            }
            Some(("burst", value)) if spec.burst.is_none() => {
                spec.burst =
                    Some(number(value, 1, BURST_MAX).ok_or("burst must be from 1 to 100000000")?);
            }
            Some(("scopes", value)) if spec.scopes == Scopes::default() => {
                for scope in value.split(',') {
                    spec.scopes
                        .insert(Scope::parse(scope).ok_or("the only scope is step")?);
                }
            }
            Some(("rate" | "burst" | "scopes", _)) => {
                return Err("rate, burst and scopes may each be given once");
            }
            _ => return Err("after the key only rate=N, burst=N and scopes=step may follow"),
        }
    }
    Ok(Some(spec))
}

fn number(text: &str, min: u32, max: u32) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>().ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbb+/=~";

    #[test]
    fn a_documented_file_parses() {
        let text = format!(
            "# fibd keys\n\n  ci-bot\t{KEY_A}  rate=100 burst=200 # the CI\n\
             stepper {KEY_B} scopes=step\n   # indented comment\n"
        );
        let specs = parse(&text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "ci-bot");
        assert_eq!(specs[0].key, KEY_A.as_bytes());
        assert_eq!(
            (specs[0].rate_per_sec, specs[0].burst),
            (Some(100), Some(200))
        );
        assert!(!specs[0].scopes.contains(Scope::Step));
        assert_eq!((specs[1].rate_per_sec, specs[1].burst), (None, None));
        assert!(specs[1].scopes.contains(Scope::Step));
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(
            parse(&format!("n {KEY_A} rate=0")).unwrap()[0].rate_per_sec,
            Some(0)
        );
    }

    #[test]
    fn problems_name_their_line_and_never_the_key() {
        let cases: &[(String, usize)] = &[
            (format!("ok {KEY_A}\nbad!name {KEY_B}"), 2),
            ("lonely".to_owned(), 1),
            ("short 0123456789abcde".to_owned(), 1),
            (format!("n {KEY_A}é"), 1),
            (format!("n {}", "k".repeat(257)), 1),
            (format!("{} {KEY_A}", "n".repeat(65)), 1),
            (format!("n {KEY_A} rate=-1"), 1),
            (format!("n {KEY_A} rate=10000001"), 1),
            (format!("n {KEY_A} rate="), 1),
            (format!("n {KEY_A} burst=0"), 1),
            (format!("n {KEY_A} rate=1 rate=2"), 1),
            (format!("n {KEY_A} scopes=admin"), 1),
            (format!("n {KEY_A} scopes=step,"), 1),
            (format!("n {KEY_A} colour=blue"), 1),
            (format!("n {KEY_A} step"), 1),
            (format!("a {KEY_A}\n\n# c\na {KEY_B}"), 4),
            (format!("a {KEY_A}\nb {KEY_A}"), 2),
        ];
        for (text, line) in cases {
            let err = parse(text).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Line { line: l, .. } if l == *line),
                "{text:?}: {err}"
            );
            let shown = err.to_string();
            assert!(!shown.contains(KEY_A) && !shown.contains(KEY_B), "{shown}");
        }
    }

    #[test]
    fn the_key_count_is_bounded() {
        let text: String = (0..=KEYS_MAX)
            .map(|i| format!("k{i} key-{i:016}\n"))
            .collect();
        assert_eq!(parse(&text), Err(KeyFileError::TooManyKeys));
        let fits: String = text
            .lines()
            .take(KEYS_MAX)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&fits).unwrap().len(), KEYS_MAX);
        // A repeat after the last of them is still found, by name or by key.
        for repeat in [
            format!("k0 key-{:016}\n", KEYS_MAX),
            "x key-0000000000000007\n".to_owned(),
        ] {
            let err = parse(&format!("{fits}{repeat}")).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Line { line, .. } if line == KEYS_MAX + 1),
                "{repeat:?}: {err}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let specs = parse(&format!("n {KEY_A}")).unwrap();
        assert!(!format!("{specs:?}").contains(KEY_A));
    }

    #[test]
    fn reading_is_bounded() {
        let dir = std::env::temp_dir().join(format!("fibd-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; FILE_BYTES_MAX as usize + 1]).unwrap();
        assert_eq!(read(&big), Err(KeyFileError::TooLarge));
        let fits = dir.join("fits");
        std::fs::write(&fits, format!("n {KEY_A}\n")).unwrap();
        assert_eq!(read(&fits).unwrap().len(), 1);
        assert!(matches!(
            read(&dir.join("absent")),
            Err(KeyFileError::Unreadable(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
