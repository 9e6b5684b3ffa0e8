//! argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane), always on threads of its own
//! (one per core): a hash costs ~15 ms of CPU, which must not stall the async workers. Each one
//! also holds 19 MiB while it runs, so at most one per core runs at a time, and only a bounded number of
//! callers may wait for a turn: past that a login is shed at once (`Overloaded`) instead of
//! queueing without end while every answer gets later. Also the strength check of new
//! passwords (zxcvbn).

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{Semaphore, oneshot};

type Work = Box<dyn FnOnce() + Send>;

/// The argon2 queue is full: the caller should answer 503 and come back later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

/// Runs argon2 within a concurrency limit (one per core) and a bounded wait queue.
pub struct PasswordGate {
    permits: Semaphore,
    /// How many callers may wait for a permit.
    queue: usize,
    waiting: AtomicUsize,
    /// argon2 computations started (hashes and verifications), for tests and metrics.
    computed: AtomicU64,
    /// To the gate's threads, each with its argon2 memory allocated once (see [`MEMORY`]).
    work: mpsc::Sender<Work>,
}

impl PasswordGate {
    pub fn new(queue: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (work, jobs) = mpsc::channel::<Work>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..cores {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("sessiond-argon2-{i}"))
                .spawn(move || {
                    // Ends when the gate (the only sender) is dropped.
                    loop {
                        let next = jobs.lock().expect("argon2 queue").recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .expect("an argon2 thread starts");
        }
        PasswordGate {
            permits: Semaphore::new(cores),
            queue,
            waiting: AtomicUsize::new(0),
            computed: AtomicU64::new(0),
            work,
        }
    }

    /// How many callers wait for a turn at argon2 now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How many argon2 computations have started.
    pub fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Overloaded> {
        let _permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // Admission first, then the wait: a full queue refuses without waiting at all.
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Overloaded);
                }
                let permit = self.permits.acquire().await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                permit.expect("the semaphore is never closed")
            }
        };
        self.computed.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.work
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .expect("the argon2 threads live as long as the gate");
        Ok(rx.await.expect("argon2 tasks do not panic"))
    }

    pub async fn hash(&self, password: String) -> Result<String, Overloaded> {
        self.run(move || hash(password.as_bytes())).await
    }

    /// Verifies `password` against `stored`. With no stored hash (unknown user) it verifies
    /// against a fixed dummy hash, so the answer takes as long as a real wrong password.
    pub async fn verify(
        &self,
        stored: Option<String>,
        password: String,
    ) -> Result<bool, Overloaded> {
        self.run(move || {
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
            verify(&phc, password.as_bytes()) && known
        })
        .await
    }
}

thread_local! {
    /// This thread's argon2 memory (19 MiB), allocated once and reused by every hash it runs.
    /// Allocated per hash instead, each freed buffer stayed in a malloc arena of its own
    /// (measured: 840 MB resident after 64 logins, on the blocking pool's threads).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with_borrow_mut(|m| {
        if m.len() < blocks {
            m.resize(blocks, Block::new());
        }
        f(&mut m[..blocks])
    })
}

/// A new PHC string for `password` (what `PasswordHasher::hash_password` gives, computed in
/// this thread's memory).
fn hash(password: &[u8]) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let argon = argon2();
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .expect("a generated salt decodes");
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_memory(argon.params().block_count(), |m| {
        argon.hash_password_into_with_memory(password, salt_bytes, &mut out, m)
    })
    .expect("argon2 hashing with valid parameters cannot fail");
    PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).expect("OWASP parameters encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("a 32-byte output")),
    }
    .to_string()
}

/// Whether `password` hashes to `phc` under the parameters `phc` names (what
/// `PasswordVerifier::verify_password` answers; the comparison is constant-time).
fn verify(phc: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = with_memory(argon.params().block_count(), |m| {
        argon.hash_password_into_with_memory(password, salt_bytes, &mut out, m)
    });
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    // Once, on whichever thread warms up: the crate's own hashing, which frees its memory.
    DUMMY.get_or_init(|| {
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2()
            .hash_password(b"no user has this password", &salt)
            .expect("argon2 hashing with valid parameters cannot fail")
            .to_string()
    })
}

/// Computes the dummy hash ahead of the first login for an unknown name, so that first answer
/// is not slower than a wrong password's.
pub fn warm_up() {
    let _ = dummy_hash();
}

/// zxcvbn's verdict on a new password: `Err(reason)` when its score (0–4) is below
/// `min_score`. The username counts as a known word (a password made of it is weak).
pub fn check_strength(password: &str, username: &str, min_score: u8) -> Result<(), String> {
    let estimate = zxcvbn::zxcvbn(password, &[username]);
    let score = u8::from(estimate.score());
    if score >= min_score {
        return Ok(());
    }
    let mut reason =
        format!("the password is too easy to guess (strength {score} of 4, {min_score} needed)");
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            reason.push_str(&format!(": {warning}"));
        }
        let tips: Vec<String> = feedback
            .suggestions()
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !tips.is_empty() {
            reason.push_str(&format!(". {}", tips.join(" ")));
        }
    }
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_and_name_based_passwords_are_weak_and_passphrases_pass() {
        assert!(check_strength("password1", "alice", 3).is_err());
        assert!(check_strength("alice2024", "alice", 3).is_err());
        let why = check_strength("qwerty123", "bob", 3).unwrap_err();
        assert!(why.contains("too easy to guess"), "{why}");
        assert!(check_strength("correct horse battery", "alice", 3).is_ok());
    }

    #[test]
    fn hashes_are_phc_strings_the_argon2_crate_verifies_and_the_other_way_round() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let ours = hash(b"correct horse battery");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            argon2()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        assert!(
            argon2()
                .verify_password(b"correct horse battery!", &parsed)
                .is_err()
        );
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = argon2()
            .hash_password(b"tr0ub4dor", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&theirs, b"tr0ub4dor"));
        assert!(!verify(&theirs, b"tr0ub4dor&3"));
        assert!(!verify("$argon2id$v=19$not-a-hash", b"tr0ub4dor"));
        // Other parameters than ours (an older hash) verify too, in memory of their size.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let older = small
            .hash_password(b"tr0ub4dor", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&older, b"tr0ub4dor"));
    }

    #[tokio::test]
    async fn a_full_queue_sheds_at_once() {
        let gate = std::sync::Arc::new(PasswordGate::new(0));
        // Hold every permit, so the next caller would have to wait: with no queue it is refused.
        let held: Vec<_> = (0..gate.permits.available_permits())
            .map(|_| gate.permits.try_acquire().unwrap())
            .collect();
        assert_eq!(gate.verify(None, "x".into()).await, Err(Overloaded));
        drop(held);
        assert_eq!(gate.verify(None, "x".into()).await, Ok(false));
    }
}
