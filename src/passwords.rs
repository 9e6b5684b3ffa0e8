//! argon2id with the OWASP parameters (19 MiB, 2 passes, 1 lane), always on the blocking pool:
//! a hash costs ~15 ms of CPU, which must not stall the async workers. Each one also holds
//! 19 MiB while it runs, so at most one per core runs at a time: a burst of logins queues
//! instead of multiplying memory (64 at once would hold 1.2 GiB).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::OnceLock;
use tokio::sync::Semaphore;

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores)
    })
}

/// Runs one argon2 computation on the blocking pool, within the concurrency limit.
async fn run_limited<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let _permit = permits()
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(work)
        .await
        .expect("argon2 tasks do not panic")
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: String) -> String {
    run_limited(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 hashing with valid parameters cannot fail")
            .to_string()
    })
    .await
}

/// Verifies `password` against `stored`. With no stored hash (unknown user) it verifies against
/// a fixed dummy hash, so the answer takes as long as a real wrong password.
pub async fn verify(stored: Option<String>, password: String) -> bool {
    run_limited(move || {
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
