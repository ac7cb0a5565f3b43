//! Inbox accounts: agents sign in with a name and a password, kept as an
//! Argon2id hash (the `argon2` crate's defaults: 19 MiB, 2 passes).

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tandem_store::{Store, StoreError};

/// Fewest characters a password may have.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Most bytes a password may have: hashing is costly, so a huge one is refused.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most characters of an agent's name.
pub const MAX_NAME_CHARS: usize = 200;

/// Why an account was not saved.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an agent's name is 1 to {MAX_NAME_CHARS} characters, without control characters")]
    BadName,
    #[error("a password is {MIN_PASSWORD_CHARS} characters to {MAX_PASSWORD_BYTES} bytes")]
    BadPassword,
    #[error("hashing the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the inbox account `name` (the name the agent replies under), or
/// sets its password when it exists.
pub async fn save_agent(store: &Store, name: &str, password: &str) -> Result<(), AccountError> {
    check_name(name)?;
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::BadPassword);
    }
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))??;
    store.save_agent_account(name, hash).await?;
    Ok(())
}

/// The agent name that `name` and `password` sign in as, or `None`. Takes
/// as long for an unknown or disabled account as for a wrong password, so
/// the answer's time does not tell which names exist.
pub async fn verify(
    store: &Store,
    name: &str,
    password: &str,
) -> Result<Option<String>, StoreError> {
    if password.len() > MAX_PASSWORD_BYTES || check_name(name).is_err() {
        return Ok(None);
    }
    let account = store
        .agent_account(name)
        .await?
        .filter(|account| account.disabled_at.is_none());
    let stored = account
        .as_ref()
        .map(|account| account.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.clone());
    let password = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false);
    Ok(account.filter(|_| matches).map(|account| account.name))
}

fn check_name(name: &str) -> Result<(), AccountError> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AccountError::BadName);
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// A hash no password matches in practice, checked against when the
/// account does not exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("no account has this password").unwrap_or_default());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let first = hash_password("correct horse battery").unwrap();
        let second = hash_password("correct horse battery").unwrap();
        assert!(first.starts_with("$argon2id$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        let parsed = PasswordHash::new(&first).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery!", &parsed)
                .is_err()
        );
    }

    #[test]
    fn names() {
        assert!(check_name("Sam").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
