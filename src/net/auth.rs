//! Tokens with roles: who may push batches, who may also solve, sync and read the state.
//!
//! A token file holds one token a line, `ROLE TOKEN` (`push` or `admin`); blank lines and
//! lines starting with `#` are skipped. The server loads every line ([`Tokens::load`]); a
//! client uses the first token in its file ([`Token::from_file`]; a line may then hold the
//! token alone) or `HEADSTART_TOKEN` ([`Token::from_env`]). Like ssh with private keys, both
//! refuse a file that group or others may read or write.
//!
//! The server keeps only SHA-256 digests of its tokens and compares a presented token's digest
//! with every one of them in constant time, so neither the time taken nor a log line tells
//! anything about a token.
//!
//! # Examples
//! ```
//! use headstart::net::auth::{Role, Token, Tokens};
//! let tokens = Tokens::parse("# edge devices\npush 0123456789abcdef\nadmin fedcba9876543210\n", "inline")?;
//! assert_eq!(tokens.role_of(b"0123456789abcdef"), Some(Role::Push));
//! assert_eq!(tokens.role_of(b"fedcba9876543210"), Some(Role::Admin));
//! assert_eq!(tokens.role_of(b"wrong"), None);
//! let token = Token::new("0123456789abcdef")?;
//! assert_eq!(format!("{token:?}"), "Token(…)"); // never printed
//! # Ok::<(), headstart::net::auth::AuthError>(())
//! ```

use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// The environment variable a client reads its token from when no token file is given.
pub const TOKEN_ENV: &str = "HEADSTART_TOKEN";

/// The shortest token accepted, in bytes (16 random bytes hex-encoded are 32).
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest token accepted, in bytes (an AUTH frame is refused beyond it).
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Open a session and send batches; nothing else.
    Push,
    /// Everything: batches, task boundaries, solves, syncs, stats.
    Admin,
}

impl Role {
    /// The role's name in token files and messages (`push`, `admin`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Push => "push",
            Role::Admin => "admin",
        }
    }

    /// The role's code in a READY frame (1 = push, 2 = admin).
    pub fn code(self) -> u8 {
        match self {
            Role::Push => 1,
            Role::Admin => 2,
        }
    }

    /// The role of a READY frame's code.
    pub fn from_code(code: u8) -> Option<Role> {
        match code {
            1 => Some(Role::Push),
            2 => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "push" => Ok(Role::Push),
            "admin" => Ok(Role::Admin),
            // The word is not repeated: a token written without its role, or glued to it,
            // would be printed.
            _ => Err("the role (the line's first word) must be push or admin; is a space missing between the role and the token?".into()),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token or token file was refused. Messages name the file and line, never a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The token file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "{path}: permissions {mode:04o} let other users read or change it; a token file must be private (chmod 600 {path})"
    )]
    Permissions {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `ROLE TOKEN`, or the token is too short, too long or not printable.
    #[error("{source_name}, line {line}: {reason}")]
    Line {
        /// The file (or `HEADSTART_TOKEN`).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no token.
    #[error("{0}: no token in the file (lines are `push TOKEN` or `admin TOKEN`)")]
    Empty(String),
}

/// A secret token. Its `Debug` output hides it; its memory is not kept after drop beyond
/// what the allocator does.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token: at least [`MIN_TOKEN_LEN`] and at most [`MAX_TOKEN_LEN`] bytes of printable
    /// ASCII without spaces.
    ///
    /// # Errors
    /// [`AuthError::Line`] (line 1 of `token`) saying what is wrong.
    ///
    /// # Examples
    /// ```
    /// use headstart::net::auth::Token;
    /// assert!(Token::new("0123456789abcdef").is_ok());
    /// assert!(Token::new("short").is_err());
    /// ```
    pub fn new(token: &str) -> Result<Token, AuthError> {
        check_token(token).map_err(|reason| AuthError::Line {
            source_name: "token".into(),
            line: 1,
            reason,
        })?;
        Ok(Token(token.to_string()))
    }

    /// The token's bytes, as sent in an AUTH frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The first token of a token file (`ROLE TOKEN` or `TOKEN` lines).
    ///
    /// # Errors
    /// [`AuthError`]: unreadable, readable by others, malformed, or empty.
    pub fn from_file(path: &Path) -> Result<Token, AuthError> {
        let text = read_private(path)?;
        let name = path.display().to_string();
        let Some((n, line)) = lines(&text).next() else {
            return Err(AuthError::Empty(name));
        };
        let token = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [token] => token,
            [role, token] => {
                role.parse::<Role>()
                    .map_err(|reason| line_error(&name, n, reason))?;
                token
            }
            _ => return Err(line_error(&name, n, "expected `ROLE TOKEN` or `TOKEN`".into())),
        };
        check_token(token).map_err(|reason| line_error(&name, n, reason))?;
        Ok(Token(token.to_string()))
    }

    /// The token in `HEADSTART_TOKEN`, if it is set (an empty value counts as unset).
    ///
    /// # Errors
    /// [`AuthError::Line`] if the value is not a valid token.
    pub fn from_env() -> Result<Option<Token>, AuthError> {
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => check_token(v.trim())
                .map(|()| Some(Token(v.trim().to_string())))
                .map_err(|reason| line_error(TOKEN_ENV, 1, reason)),
            _ => Ok(None),
        }
    }

    /// The client's token: from `file` if given, else from `HEADSTART_TOKEN`, else none.
    ///
    /// # Errors
    /// As [`from_file`](Token::from_file) and [`from_env`](Token::from_env).
    pub fn for_client(file: Option<&Path>) -> Result<Option<Token>, AuthError> {
        match file {
            Some(path) => Token::from_file(path).map(Some),
            None => Token::from_env(),
        }
    }
}

/// The server's tokens: a SHA-256 digest and a role for each.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

impl Tokens {
    /// Loads a token file (`ROLE TOKEN` lines), refusing one that others may read.
    ///
    /// # Errors
    /// [`AuthError`] naming the file and line.
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let text = read_private(path)?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Parses a token file's text; `source_name` names it in errors.
    ///
    /// # Errors
    /// [`AuthError::Line`] for a malformed line or a token given twice; [`AuthError::Empty`].
    pub fn parse(text: &str, source_name: &str) -> Result<Tokens, AuthError> {
        let mut entries: Vec<([u8; 32], Role)> = Vec::new();
        for (n, line) in lines(text) {
            let [role, token] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return Err(line_error(
                    source_name,
                    n,
                    "expected `ROLE TOKEN` (role push or admin)".into(),
                ));
            };
            let role: Role = role
                .parse()
                .map_err(|reason| line_error(source_name, n, reason))?;
            check_token(token).map_err(|reason| line_error(source_name, n, reason))?;
            let digest = digest(token.as_bytes());
            if entries.iter().any(|(d, _)| *d == digest) {
                return Err(line_error(
                    source_name,
                    n,
                    "this token is already on an earlier line".into(),
                ));
            }
            entries.push((digest, role));
        }
        if entries.is_empty() {
            return Err(AuthError::Empty(source_name.to_string()));
        }
        Ok(Tokens { entries })
    }

    /// The role of `presented`, or `None`. Every entry is compared, each in constant time.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let digest = digest(presented);
        let mut found: Option<Role> = None;
        for (d, role) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(*role);
            }
        }
        found
    }

    /// How many tokens hold each role: `(push, admin)`.
    pub fn counts(&self) -> (usize, usize) {
        let push = self.entries.iter().filter(|(_, r)| *r == Role::Push).count();
        (push, self.entries.len() - push)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("SHA-256 has 32 bytes")
}

fn line_error(source_name: &str, line: usize, reason: String) -> AuthError {
    AuthError::Line {
        source_name: source_name.to_string(),
        line,
        reason,
    }
}

/// Non-blank, non-comment lines with their 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token has {} characters; at least {MIN_TOKEN_LEN} are needed (e.g. `openssl rand -hex 32`)",
            token.len()
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token has {} characters; at most {MAX_TOKEN_LEN}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is printable ASCII without spaces".into());
    }
    Ok(())
}

/// Reads a file that only its owner may read or write.
fn read_private(path: &Path) -> Result<String, AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if !meta.is_file() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    std::fs::read_to_string(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_others_can_read_is_refused_and_a_private_one_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "push aaaaaaaaaaaaaaaa\nadmin bbbbbbbbbbbbbbbb\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Tokens::load(&path).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"),
                "{e}"
            );
            assert!(Token::from_file(&path).is_err());
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.counts(), (1, 1));
        assert_eq!(Token::from_file(&path).unwrap().as_bytes(), b"aaaaaaaaaaaaaaaa");
    }

    #[test]
    fn malformed_lines_are_named_without_the_token() {
        let secret = "cccccccccccccccc";
        for (text, line, words) in [
            (format!("root {secret}"), 1, "must be push or admin"),
            (format!("push{secret} {secret}"), 1, "must be push or admin"),
            (format!("push {secret} extra"), 1, "ROLE TOKEN"),
            ("# c\n\npush short".to_string(), 3, "at least 16"),
            (format!("push {secret}\nadmin {secret}"), 2, "already"),
        ] {
            let e = Tokens::parse(&text, "f").unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}")) && e.contains(words), "{e}");
            assert!(!e.contains(secret), "{e}");
        }
        assert!(matches!(
            Tokens::parse("# nothing\n", "f"),
            Err(AuthError::Empty(_))
        ));
    }

    #[test]
    fn roles_match_whole_tokens_only() {
        let tokens = Tokens::parse("push aaaaaaaaaaaaaaaa\nadmin bbbbbbbbbbbbbbbb", "f").unwrap();
        assert_eq!(tokens.role_of(b"aaaaaaaaaaaaaaaa"), Some(Role::Push));
        assert_eq!(tokens.role_of(b"bbbbbbbbbbbbbbbb"), Some(Role::Admin));
        for wrong in [
            &b""[..],
            b"aaaaaaaaaaaaaaa",
            b"aaaaaaaaaaaaaaaaa",
            b"bbbbbbbbbbbbbbbc",
        ] {
            assert_eq!(tokens.role_of(wrong), None);
        }
    }
}
