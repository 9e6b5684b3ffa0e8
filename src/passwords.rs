//! argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane), always on threads of its own
//! (one per core): a hash costs ~15 ms of CPU, which must not stall the async workers. Each one
//! also holds 19 MiB while it runs, so at most one per core runs at a time, and only a bounded number of
//! callers may wait for a turn: past that a login is shed at once (`Overloaded`) instead of
//! queueing without end while every answer gets later. Also the strength check of new
//! passwords (zxcvbn).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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
    /// To the gate's threads. Not the blocking pool: each of its (many, short-lived) threads
    /// gets a malloc arena of its own, and every arena kept its freed 19 MiB (measured: 840 MB
    /// resident after 64 logins). A fixed thread per permit keeps one such buffer each.
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
        self.run(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .expect("argon2 hashing with valid parameters cannot fail")
                .to_string()
        })
        .await
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
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
                && known
        })
        .await
    }
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
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
