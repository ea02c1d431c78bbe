//! Takes libpq's TLS settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) out of a connection
//! string, in either of its two forms (a `postgres://` URL or `key=value` pairs), because
//! tokio-postgres knows only `disable | prefer | require` and refuses the other three keys.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The keys this module takes out; everything else is left to tokio-postgres.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string split in two: the TLS settings, and the rest as a connection string of the
/// same form (for tokio-postgres to parse).
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub rest: String,
    /// `(key, value)` pairs of [`TLS_KEYS`], in the order given (a later one wins, as in libpq).
    pub tls: Vec<(String, String)>,
}

/// Why a connection string could not be split.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    #[error("unterminated quoted value in the connection string")]
    UnterminatedQuote,
    #[error("missing \"=\" after {0:?} in the connection string")]
    MissingEquals(String),
    #[error("the value of {0} in the connection URL is not valid UTF-8 once percent-decoded")]
    NotUtf8(String),
}

/// Splits `conninfo` into its TLS settings and the rest.
pub fn split(conninfo: &str) -> Result<Split, ConninfoError> {
    if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        split_url(conninfo)
    } else {
        split_pairs(conninfo)
    }
}

fn is_tls_key(key: &str) -> bool {
    TLS_KEYS.contains(&key)
}

fn split_url(url: &str) -> Result<Split, ConninfoError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(Split {
            rest: url.to_owned(),
            tls: Vec::new(),
        });
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = decode(key)?;
        if is_tls_key(&key) {
            tls.push((key.into_owned(), decode(value)?.into_owned()));
        } else {
            kept.push(param);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(Split { rest, tls })
}

fn decode(text: &str) -> Result<Cow<'_, str>, ConninfoError> {
    percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| ConninfoError::NotUtf8(text.to_owned()))
}

/// `key = value` pairs separated by whitespace; a value may be single-quoted, and a backslash
/// escapes the next character (libpq's rules). The pairs that stay are copied verbatim.
fn split_pairs(conninfo: &str) -> Result<Split, ConninfoError> {
    let bytes = conninfo.as_bytes();
    let mut kept: Vec<&str> = Vec::new();
    let mut tls = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[start..i];
        i = skip_space(i);
        if bytes.get(i) != Some(&b'=') {
            return Err(ConninfoError::MissingEquals(key.to_owned()));
        }
        i = skip_space(i + 1);
        let mut value = String::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(ConninfoError::UnterminatedQuote),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(char_at(conninfo, i + 1));
                        i += 1 + char_at(conninfo, i + 1).len_utf8();
                    }
                    Some(_) => {
                        let c = char_at(conninfo, i);
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = char_at(conninfo, i);
                value.push(c);
                i += c.len_utf8();
            }
        }
        if is_tls_key(key) {
            tls.push((key.to_owned(), value));
        } else {
            kept.push(&conninfo[start..i]);
        }
    }
    Ok(Split {
        rest: kept.join(" "),
        tls,
    })
}

fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().expect("an index inside the text")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn key_value_strings_lose_only_their_tls_settings() {
        let split = split(
            "host=db.example.com sslmode=verify-full user=app \
             sslrootcert='/etc/ssl/my ca.pem' dbname = app sslcert=/c\\ d.pem",
        )
        .unwrap();
        assert_eq!(split.rest, "host=db.example.com user=app dbname = app");
        assert_eq!(
            split.tls,
            tls(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/etc/ssl/my ca.pem"),
                ("sslcert", "/c d.pem"),
            ])
        );
    }

    #[test]
    fn quoted_values_keep_their_escapes_and_other_pairs_stay_verbatim() {
        let split = split("password='it\\'s' sslkey='/k.pem' options='-c a=b'").unwrap();
        assert_eq!(split.rest, "password='it\\'s' options='-c a=b'");
        assert_eq!(split.tls, tls(&[("sslkey", "/k.pem")]));
    }

    #[test]
    fn urls_lose_only_their_tls_parameters() {
        let split = split(
            "postgres://app:p%40ss@db:5432/app?sslmode=require&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            split.rest,
            "postgres://app:p%40ss@db:5432/app?application_name=x"
        );
        assert_eq!(
            split.tls,
            tls(&[("sslmode", "require"), ("sslrootcert", "/etc/ca.pem")])
        );
        let split = super::split("postgresql://db/app?sslmode=disable").unwrap();
        assert_eq!(split.rest, "postgresql://db/app");
        assert_eq!(split.tls, tls(&[("sslmode", "disable")]));
    }

    #[test]
    fn strings_without_tls_settings_are_unchanged() {
        for conninfo in ["postgres://db/app", "host=db user=app", ""] {
            let split = split(conninfo).unwrap();
            assert_eq!(split.rest, conninfo);
            assert!(split.tls.is_empty());
        }
    }

    #[test]
    fn malformed_key_value_strings_are_refused_clearly() {
        assert_eq!(
            split("host=db sslrootcert='/a"),
            Err(ConninfoError::UnterminatedQuote)
        );
        assert_eq!(
            split("host=db sslmode"),
            Err(ConninfoError::MissingEquals("sslmode".into()))
        );
    }
}
