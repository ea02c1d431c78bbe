//! Signed payloads. LISTEN and NOTIFY need no privilege, so any role that can connect may send a
//! notification on threadcast's channel; only a payload signed with a key of `threadcast.keys`
//! (readable by the extension's owner and the roles `threadcast.grant_listen()` names) is trusted.
//!
//! The signature is HMAC-SHA256, base64url without padding (43 characters), carried as the last
//! member of the JSON object: `...,"kid":1,"sig":"<43 chars>"}`. It covers the payload's JSON text
//! without that member, byte for byte as the extension wrote it, so nothing is re-serialized
//! before checking and a changed `seq`, `thread`, `src` or row fails.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::PayloadError;

/// Length of a signing key, in bytes.
pub const KEY_BYTES: usize = 32;

/// What signing adds to the JSON text: `,"sig":"` and 43 base64url characters and `"` before
/// the closing brace.
pub const SIGNATURE_BYTES: usize = SIG_PREFIX.len() + SIG_CHARS + 1;

/// The signature member and the closing brace, at the end of a signed payload.
const SUFFIX_BYTES: usize = SIGNATURE_BYTES + 1;

const SIG_PREFIX: &str = ",\"sig\":\"";
const SIG_CHARS: usize = 43;

type HmacSha256 = Hmac<Sha256>;

/// One signing key, as a row of `threadcast.keys` holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: u32,
    pub secret: [u8; KEY_BYTES],
}

// Never print a secret, not even in a test failure.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key from a `threadcast.keys` row; `None` when the secret is not [`KEY_BYTES`] long.
    pub fn from_row(id: u32, secret: &[u8]) -> Option<Key> {
        Some(Key {
            id,
            secret: secret.try_into().ok()?,
        })
    }

    fn mac(&self, message: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(message);
        mac
    }
}

/// The keys a consumer accepts: every key of `threadcast.keys` (old and new overlap during a
/// rotation, so a change signed just before it still verifies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = Key>) -> KeyRing {
        KeyRing {
            keys: keys.into_iter().collect(),
        }
    }

    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|k| k.id)
    }
}

/// Appends the signature member to `json`, a JSON object as the encoder wrote it.
pub(crate) fn append(mut json: String, key: &Key) -> String {
    let tag = key.mac(json.as_bytes()).finalize().into_bytes();
    json.pop(); // the closing brace
    json.push_str(SIG_PREFIX);
    URL_SAFE_NO_PAD.encode_string(tag, &mut json);
    json.push_str("\"}");
    json
}

/// Checks that `text` ends in a signature member that `key` made over the rest of it.
pub(crate) fn check(text: &str, key: &Key) -> Result<(), PayloadError> {
    let bytes = text.as_bytes();
    let Some(start) = bytes.len().checked_sub(SUFFIX_BYTES) else {
        return Err(PayloadError::BadSignature);
    };
    let (body, suffix) = bytes.split_at(start);
    let Some(encoded) = suffix
        .strip_prefix(SIG_PREFIX.as_bytes())
        .and_then(|s| s.strip_suffix(b"\"}"))
    else {
        return Err(PayloadError::BadSignature);
    };
    let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
        return Err(PayloadError::BadSignature);
    };
    let mut mac = key.mac(body);
    mac.update(b"}");
    mac.verify_slice(&tag)
        .map_err(|_| PayloadError::BadSignature)
}
