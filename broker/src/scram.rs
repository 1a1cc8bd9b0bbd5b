//! SCRAM credentials (KIP-554): what DescribeUserScramCredentials and
//! AlterUserScramCredentials manage. Like Kafka, the broker keeps the salt, the iteration
//! count and the keys RFC 5802 derives from the salted password (StoredKey, ServerKey),
//! never the salted password itself.

use hmac::digest::KeyInit;
use hmac::{Mac, SimpleHmac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// SCRAM-SHA-256.
pub const SHA_256: i8 = 1;
/// SCRAM-SHA-512.
pub const SHA_512: i8 = 2;

/// Fewest iterations accepted (Kafka's limit).
pub const MIN_ITERATIONS: i32 = 4096;
/// Most iterations accepted (Kafka's limit).
pub const MAX_ITERATIONS: i32 = 16384;

/// One user's credential for one mechanism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// PBKDF2 iterations the client used.
    pub iterations: i32,
    /// Salt.
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

/// Why an alteration is refused: Kafka error code and message.
pub type Refusal = (i16, String);

fn keys<D: Digest + hmac::digest::core_api::BlockSizeUser>(
    salted_password: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let hmac = |msg: &[u8]| {
        let mut m = <SimpleHmac<D> as KeyInit>::new_from_slice(salted_password)
            .expect("HMAC takes keys of any length");
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(b"Client Key");
    (D::digest(&client_key).to_vec(), hmac(b"Server Key"))
}

/// Checks an upsertion as Kafka does and derives the credential to store.
pub fn credential(
    user: &str,
    mechanism: i8,
    iterations: i32,
    salt: &[u8],
    salted_password: &[u8],
) -> Result<Credential, Refusal> {
    use kafka_protocol::error::ResponseError as E;
    let unacceptable = |m: &str| Err((E::UnacceptableCredential.code(), m.to_string()));
    check_mechanism(mechanism)?;
    if user.is_empty() {
        return unacceptable("Username must not be empty");
    }
    if iterations < MIN_ITERATIONS {
        return unacceptable("Too few iterations");
    }
    if iterations > MAX_ITERATIONS {
        return unacceptable("Too many iterations");
    }
    if salt.is_empty() || salted_password.is_empty() {
        return unacceptable("Salt and salted password must not be empty");
    }
    let (stored_key, server_key) = if mechanism == SHA_256 {
        keys::<Sha256>(salted_password)
    } else {
        keys::<Sha512>(salted_password)
    };
    Ok(Credential {
        iterations,
        salt: salt.to_vec(),
        stored_key,
        server_key,
    })
}

/// Refuses mechanisms other than SCRAM-SHA-256 and SCRAM-SHA-512.
pub fn check_mechanism(mechanism: i8) -> Result<(), Refusal> {
    if mechanism == SHA_256 || mechanism == SHA_512 {
        Ok(())
    } else {
        Err((
            kafka_protocol::error::ResponseError::UnsupportedSaslMechanism.code(),
            "Unknown SCRAM mechanism".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_the_keys_of_rfc_7677s_example() {
        // RFC 7677 §3 (user "user", password "pencil", 4096 iterations); the salted
        // password and expected keys computed with Python's hashlib/hmac.
        let salt = hex("5b6d99689d12358eeca04b141236fa81");
        let salted = hex("c4a49510323ab4f952cac1fa99441939e78ea74d6be81ddf7096e87513dc615d");
        let c = credential("user", SHA_256, 4096, &salt, &salted).expect("valid");
        assert_eq!(
            c.stored_key,
            hex("586e5df283e6dceb5c3e791d8b8528ec191e664045ce971792e2e6b5bb13e2a6")
        );
        assert_eq!(
            c.server_key,
            hex("c1f3cbc1c13a9d35a14c0990eed97629ea225863e566a4314ab99f3f00e5d9d5")
        );
        let salted = hex(concat!(
            "f16efe1be67f1d09502ebd5ed9262fddffba5a377ab4f0b687e5ed5ba0f50686",
            "b8a4ae166476da8ab3b951d2fa9238b63998f45461bc33a464814949cec9631d"
        ));
        let c = credential("user", SHA_512, 4096, &salt, &salted).expect("valid");
        assert_eq!(
            c.stored_key,
            hex(concat!(
                "e8002e6f7d3ae446119b216933644dc2a2be7869eb918b8459b5e7d7d2ec1260",
                "6aceef106825cd735170a675fd3611f684affad1dce3f43a0ee43bd590e1dbbe"
            ))
        );
        assert_eq!(
            c.server_key,
            hex(concat!(
                "8d91db6230b5687874fe129bc7206e1858c3ae08e02934f57ac03b6b05a229c4",
                "59d28ff46f5c9611e6c179256490215ec1ff759cb0df285db89af0f99e613aac"
            ))
        );
    }

    #[test]
    fn kafkas_limits() {
        let ok = credential("u", SHA_512, 4096, b"s", b"p").expect("valid");
        assert_eq!(ok.stored_key.len(), 64);
        for (user, mech, it) in [
            ("", 1, 4096),
            ("u", 3, 4096),
            ("u", 1, 4095),
            ("u", 1, 16385),
        ] {
            assert!(credential(user, mech, it, b"s", b"p").is_err());
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
