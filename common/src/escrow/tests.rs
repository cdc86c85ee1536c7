//! Envelope tests. Each Argon2id derivation costs real time (the floor may not be lowered for
//! tests), so derivations are few and at the floor.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

const GOOD: &str = "correct horse battery staple";

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_owned())
}

#[test]
fn master_round_trip_wrong_passphrase_and_tampering() {
    let key = MasterKey::from_bytes([9; 32]);
    let env = seal_master(&key, KdfParams::FLOOR, &pass(GOOD)).expect("seal");
    let h = EnvelopeHeader::parse(&env).expect("header");
    assert_eq!(h.kind, EscrowKind::Master);
    assert_eq!(h.params, KdfParams::FLOOR);
    assert_eq!(env.len(), HEADER_LEN + 32 + TAG_LEN);

    let back = open_master(&env, &pass(GOOD)).expect("open");
    assert_eq!(back.expose_bytes(), key.expose_bytes());

    let wrong = open_master(&env, &pass("correct horse battery stapler")).expect_err("wrong");
    assert!(matches!(wrong, EscrowError::WrongPassphrase));
    assert!(wrong.to_string().contains("wrong passphrase or damaged"));

    let mut flipped = env.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        open_master(&flipped, &pass(GOOD)),
        Err(EscrowError::WrongPassphrase)
    ));

    // A header change that stays within bounds fails the tag (header is the AAD).
    let mut t4 = env.clone();
    t4[10..14].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        open_master(&t4, &pass(GOOD)),
        Err(EscrowError::WrongPassphrase)
    ));
}

#[test]
fn headers_below_the_floor_or_above_the_ceiling_are_refused_before_deriving() {
    let key = MasterKey::from_bytes([1; 32]);
    let env = seal_master(&key, KdfParams::FLOOR, &pass(GOOD)).expect("seal");
    let mut low = env.clone();
    low[6..10].copy_from_slice(&(8 * 1024u32).to_le_bytes());
    assert!(matches!(
        EnvelopeHeader::parse(&low),
        Err(EscrowError::BelowFloor(_))
    ));
    assert!(matches!(
        open_master(&low, &pass(GOOD)),
        Err(EscrowError::BelowFloor(_))
    ));
    let mut t1 = env.clone();
    t1[10..14].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        EnvelopeHeader::parse(&t1),
        Err(EscrowError::BelowFloor(_))
    ));
    let mut huge = env.clone();
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        EnvelopeHeader::parse(&huge),
        Err(EscrowError::AboveCeiling(_))
    ));
    let mut kind = env.clone();
    kind[5] = 2;
    assert!(matches!(
        open_master(&kind, &pass(GOOD)),
        Err(EscrowError::KindMismatch { .. })
    ));
    kind[5] = 9;
    assert!(matches!(
        EnvelopeHeader::parse(&kind),
        Err(EscrowError::UnknownKind(9))
    ));
    assert!(matches!(
        EnvelopeHeader::parse(&env[..40]),
        Err(EscrowError::Truncated(40))
    ));
    let mut magic = env.clone();
    magic[0] = b'X';
    assert!(matches!(
        EnvelopeHeader::parse(&magic),
        Err(EscrowError::BadMagic)
    ));
    let mut version = env;
    version[4] = 2;
    assert!(matches!(
        EnvelopeHeader::parse(&version),
        Err(EscrowError::UnsupportedVersion(2))
    ));
}

#[test]
fn seal_refuses_weak_passphrases_and_low_parameters() {
    let key = MasterKey::from_bytes([2; 32]);
    let weak = seal_master(&key, KdfParams::DEFAULT, &pass("Password1234!")).expect_err("weak");
    assert!(matches!(weak, EscrowError::Weak(_)), "{weak}");
    let low = KdfParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };
    assert!(matches!(
        seal_master(&key, low, &pass(GOOD)),
        Err(EscrowError::BelowFloor(_))
    ));
}

#[test]
fn ca_bundle_round_trip() {
    let ca = CaBundle {
        cert_pem: b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n".to_vec(),
        key_pem: b"-----BEGIN PRIVATE KEY-----\ndef\n-----END PRIVATE KEY-----\n".to_vec(),
    };
    let env = seal_ca(&ca, KdfParams::FLOOR, &pass(GOOD)).expect("seal");
    assert_eq!(
        EnvelopeHeader::parse(&env).expect("header").kind,
        EscrowKind::Ca
    );
    let back = open_ca(&env, &pass(GOOD)).expect("open");
    assert_eq!(back.cert_pem, ca.cert_pem);
    assert_eq!(back.key_pem, ca.key_pem);
    assert!(CaBundle::decode(&[1, 0, 0]).is_err());
    assert!(CaBundle::decode(&[9, 0, 0, 0, 1]).is_err());
}

/// Measures the default parameters (run with --ignored --nocapture; numbers go in ADR 0007).
#[test]
#[ignore]
fn measure_default_parameters() {
    let key = MasterKey::from_bytes([3; 32]);
    for params in [KdfParams::FLOOR, KdfParams::DEFAULT] {
        let t = std::time::Instant::now();
        let env = seal_master(&key, params, &pass(GOOD)).expect("seal");
        let seal = t.elapsed();
        let t = std::time::Instant::now();
        open_master(&env, &pass(GOOD)).expect("open");
        println!("{params}: seal {seal:?}, open {:?}", t.elapsed());
    }
}
