//! Unit tests of the wallet: amounts, coin selection, key files.
use super::*;
use crate::crypto::SignatureScheme;
use proptest::prelude::*;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const MAGIC: [u8; 4] = *b"TDEV";

fn recipient() -> Address {
    Address([9; 20])
}

fn coins(wallet: &Wallet, values: &[u64]) -> Vec<(OutPoint, TxOut)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &value)| {
            (
                OutPoint {
                    txid: [(i % 251) as u8 + 1; 32],
                    index: i as u32,
                },
                TxOut {
                    value,
                    address: wallet.address(),
                },
            )
        })
        .collect()
}

fn view(spendable: &[(OutPoint, TxOut)]) -> HashMap<OutPoint, TxOut> {
    spendable.iter().copied().collect()
}

// Key file.

#[test]
fn load_or_create_writes_a_0600_key_and_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Wallet::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(WALLET_KEY_FILE);
    assert_eq!(Wallet::key_path(dir.path()), path);
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.ends_with('\n'));
    let b = Wallet::load_or_create(dir.path()).unwrap();
    assert_eq!(a.address(), b.address());
    assert_eq!(a.public_key(), b.public_key());
    let c = Wallet::load(&path).unwrap();
    assert_eq!(a.address(), c.address());
    assert_eq!(a.secret_key().scheme(), SignatureScheme::Ed25519);
    assert_eq!(
        a.address(),
        Address::from_public_key(&a.secret_key().public_key())
    );
}

#[test]
fn group_or_world_readable_key_is_refused() {
    for mode in [0o644, 0o640, 0o604] {
        let dir = tempfile::tempdir().unwrap();
        Wallet::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(WALLET_KEY_FILE);
        let before = fs::read(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = Wallet::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                WalletError::KeyFile(KeyFileError::InsecurePermissions { mode: m, .. }) if m == mode
            ),
            "{err}"
        );
        assert_eq!(err.kind(), "key_file_permissions");
        assert!(err.to_string().contains("chmod 600"));
        assert_eq!(fs::read(&path).unwrap(), before, "never replaced");
    }
}

#[test]
fn corrupt_key_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(WALLET_KEY_FILE);
    write_secret_file(&path, b"not a key\n").unwrap();
    let err = Wallet::load_or_create(dir.path()).unwrap_err();
    assert!(
        matches!(err, WalletError::KeyFile(KeyFileError::Corrupt { .. })),
        "{err}"
    );
    assert_eq!(err.kind(), "key_file_corrupt");
    assert_eq!(fs::read(&path).unwrap(), b"not a key\n");
    let other = dir.path().join("other");
    write_secret_file(&other, &[b'z'; 64]).unwrap();
    assert!(matches!(
        Wallet::load(&other),
        Err(WalletError::KeyFile(KeyFileError::Corrupt { .. }))
    ));
}

#[test]
fn unreadable_key_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir below a regular file cannot be read (ENOTDIR), even as
    // root.
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    let err = Wallet::load_or_create(&file).unwrap_err();
    assert!(
        matches!(err, WalletError::KeyFile(KeyFileError::Io { .. })),
        "{err}"
    );
    assert_eq!(err.kind(), "key_file_io");
    // A missing data dir is not created.
    let missing = dir.path().join("missing");
    assert!(matches!(
        Wallet::load_or_create(&missing),
        Err(WalletError::KeyFile(KeyFileError::Io { .. }))
    ));
    assert!(!missing.exists());
    // A dangling symlink is an error, not a place to write a new key.
    let linked = dir.path().join("linked");
    fs::create_dir(&linked).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere"), linked.join(WALLET_KEY_FILE)).unwrap();
    assert!(matches!(
        Wallet::load_or_create(&linked),
        Err(WalletError::KeyFile(KeyFileError::Io { .. }))
    ));
    assert!(!dir.path().join("nowhere").exists());
    // A directory where the key should be is not a key.
    let holder = dir.path().join("holder");
    fs::create_dir_all(holder.join(WALLET_KEY_FILE)).unwrap();
    assert!(matches!(
        Wallet::load_or_create(&holder),
        Err(WalletError::KeyFile(KeyFileError::Corrupt { .. }))
    ));
}

#[test]
fn debug_shows_the_address_not_the_secret() {
    let seed = [7u8; 32];
    let wallet = Wallet::from_secret(SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
        &seed,
    )));
    let debug = format!("{wallet:?}");
    assert!(debug.contains(&hex::encode(wallet.address().0)));
    assert!(!debug.contains(&hex::encode(seed)));
    assert_ne!(Wallet::generate().address(), Wallet::generate().address());
}

// Payments.

#[test]
fn payment_with_change_validates_and_pays_the_exact_fee() {
    let wallet = Wallet::generate();
    let spendable = coins(&wallet, &[3 * COIN, 5 * COIN, COIN]);
    let fee = 2 * MIN_FEE;
    let tx = wallet
        .build_payment(MAGIC, &spendable, recipient(), 6 * COIN, fee)
        .unwrap();
    assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(fee));
    // Largest first: 5 then 3 TIME.
    let spent: Vec<u64> = tx
        .inputs
        .iter()
        .map(|i| view(&spendable)[&i.prevout].value)
        .collect();
    assert_eq!(spent, vec![5 * COIN, 3 * COIN]);
    assert_eq!(
        tx.outputs,
        vec![
            TxOut {
                value: 6 * COIN,
                address: recipient()
            },
            TxOut {
                value: 2 * COIN - fee,
                address: wallet.address()
            },
        ]
    );
    // Bound to the network.
    assert!(tx.validate(*b"TIME", &view(&spendable)).is_err());
}

#[test]
fn exact_payment_has_no_change_output() {
    let wallet = Wallet::generate();
    let spendable = coins(&wallet, &[COIN, COIN + MIN_FEE]);
    let tx = wallet
        .build_payment(MAGIC, &spendable, recipient(), COIN, MIN_FEE)
        .unwrap();
    assert_eq!(tx.inputs.len(), 1);
    assert_eq!(tx.outputs.len(), 1);
    assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(MIN_FEE));
}

#[test]
fn secp256k1_wallet_pays_too() {
    let wallet = Wallet::from_secret(SecretKey::generate(SignatureScheme::Secp256k1));
    let spendable = coins(&wallet, &[COIN, COIN]);
    let tx = wallet
        .build_payment(MAGIC, &spendable, recipient(), COIN, MIN_FEE)
        .unwrap();
    assert_eq!(tx.inputs.len(), 2);
    assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(MIN_FEE));
}

#[test]
fn coin_selection_is_deterministic() {
    let wallet = Wallet::generate();
    let mut spendable = coins(&wallet, &[COIN, 2 * COIN, 2 * COIN, COIN / 2, 3 * COIN]);
    let pick = |spendable: &[(OutPoint, TxOut)]| {
        let tx = wallet
            .build_payment(MAGIC, spendable, recipient(), 5 * COIN, MIN_FEE)
            .unwrap();
        tx.inputs.iter().map(|i| i.prevout).collect::<Vec<_>>()
    };
    let first = pick(&spendable);
    spendable.reverse();
    assert_eq!(pick(&spendable), first);
    spendable.swap(0, 3);
    assert_eq!(pick(&spendable), first);
    // 3 TIME, then the two 2 TIME outputs in outpoint order.
    let values: Vec<u64> = first.iter().map(|op| view(&spendable)[op].value).collect();
    assert_eq!(values, vec![3 * COIN, 2 * COIN, 2 * COIN]);
    assert!(first[1] < first[2]);
    // Two identical payments still get distinct ids (random nonce).
    let a = wallet
        .build_payment(MAGIC, &spendable, recipient(), COIN, MIN_FEE)
        .unwrap();
    let b = wallet
        .build_payment(MAGIC, &spendable, recipient(), COIN, MIN_FEE)
        .unwrap();
    assert_ne!(a.txid(), b.txid());
}

#[test]
fn foreign_and_duplicate_outputs_are_ignored() {
    let wallet = Wallet::generate();
    let mut spendable = coins(&wallet, &[COIN]);
    let stranger = Wallet::generate();
    spendable.extend(
        coins(&stranger, &[0, 100 * COIN])
            .into_iter()
            .map(|(mut op, out)| {
                op.index += 1_000;
                (op, out)
            }),
    );
    spendable.push(spendable[0]);
    let err = wallet
        .build_payment(MAGIC, &spendable, recipient(), 2 * COIN, MIN_FEE)
        .unwrap_err();
    assert!(matches!(
        err,
        WalletError::InsufficientFunds {
            available: COIN,
            needed
        } if needed == 2 * COIN + MIN_FEE
    ));
    let tx = wallet
        .build_payment(MAGIC, &spendable, recipient(), COIN / 2, MIN_FEE)
        .unwrap();
    assert_eq!(tx.inputs.len(), 1);
    assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(MIN_FEE));
}

#[test]
fn each_payment_error_has_its_variant() {
    let wallet = Wallet::generate();
    let spendable = coins(&wallet, &[COIN, 2 * COIN]);
    let err = |amount, fee| {
        wallet
            .build_payment(MAGIC, &spendable, recipient(), amount, fee)
            .unwrap_err()
    };
    assert!(matches!(err(0, MIN_FEE), WalletError::ZeroAmount));
    assert!(matches!(
        err(u64::MAX, MIN_FEE),
        WalletError::AmountTooLarge { .. }
    ));
    assert!(matches!(
        err(MAX_MONEY, MIN_FEE),
        WalletError::AmountTooLarge { .. }
    ));
    assert!(matches!(
        err(1, u64::MAX),
        WalletError::AmountTooLarge { .. }
    ));
    let low = err(COIN, MIN_FEE - 1);
    assert!(matches!(
        low,
        WalletError::FeeTooLow { fee, min_fee: MIN_FEE } if fee == MIN_FEE - 1
    ));
    assert_eq!(low.kind(), "fee_too_low");
    let poor = err(3 * COIN, MIN_FEE);
    assert!(
        matches!(
            poor,
            WalletError::InsufficientFunds { available, needed }
                if available == 3 * COIN && needed == 3 * COIN + MIN_FEE
        ),
        "{poor}"
    );
    assert!(poor.to_string().contains("300000000 units available"));
    assert!(matches!(
        wallet.build_payment(MAGIC, &[], recipient(), 1, MIN_FEE),
        Err(WalletError::InsufficientFunds {
            available: 0,
            needed
        }) if needed == 1 + MIN_FEE
    ));
}

#[test]
fn too_many_inputs_is_refused_and_the_limit_fits() {
    let wallet = Wallet::generate();
    let max = wallet.input_limit(recipient());
    assert!(max > 0 && max <= MAX_INPUTS);
    let spendable = coins(&wallet, &vec![MIN_FEE; MAX_INPUTS + 1]);
    let err = wallet
        .build_payment(
            MAGIC,
            &spendable,
            recipient(),
            (max as u64 - 1) * MIN_FEE + 1,
            MIN_FEE,
        )
        .unwrap_err();
    assert!(
        matches!(err, WalletError::TooManyInputs { needed, max: m } if needed == max + 1 && m == max),
        "{err}"
    );
    // The limit is tight: `max` inputs and two outputs fit, one more
    // input does not. (Signing `max` inputs end to end takes seconds in
    // a debug build: every sighash re-encodes the whole transaction.)
    let mut tx = Transaction {
        version: 1,
        inputs: spendable[..max]
            .iter()
            .map(|(op, _)| wallet.input(*op))
            .collect(),
        outputs: vec![
            TxOut {
                value: COIN,
                address: recipient()
            };
            2
        ],
        nonce: u64::MAX,
    };
    assert_eq!(tx.check_structure(false), Ok(()));
    assert!(tx.size() <= MAX_TX_BYTES);
    tx.inputs.push(wallet.input(spendable[max].0));
    assert_eq!(tx.check_structure(false), Err(TxError::TooLarge("bytes")));
    // A payment that needs many inputs (here 40, with change) is valid.
    let tx = wallet
        .build_payment(MAGIC, &spendable, recipient(), 39 * MIN_FEE - 1, MIN_FEE)
        .unwrap();
    assert_eq!(tx.inputs.len(), 40);
    assert_eq!(tx.outputs.len(), 2);
    assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(MIN_FEE));
}

// Amounts.

#[test]
fn parse_amount_reads_decimal_time_exactly() {
    assert_eq!(parse_amount("12"), Ok(12 * COIN));
    assert_eq!(parse_amount("0.5"), Ok(COIN / 2));
    assert_eq!(parse_amount("1.00000001"), Ok(COIN + 1));
    assert_eq!(parse_amount("0.00000001"), Ok(1));
    assert_eq!(parse_amount("0.1"), Ok(10_000_000));
    assert_eq!(parse_amount("0"), Ok(0));
    assert_eq!(parse_amount("007.50"), Ok(7 * COIN + COIN / 2));
    assert_eq!(parse_amount("21000000"), Ok(MAX_MONEY));
    assert_eq!(parse_amount("21000000.00000000"), Ok(MAX_MONEY));
}

#[test]
fn parse_amount_refuses_everything_else() {
    use AmountError::*;
    let cases: &[(&str, AmountError)] = &[
        ("", Empty),
        ("-1", Signed),
        ("+1", Signed),
        ("1e8", Exponent),
        ("1E-8", Exponent),
        (" 1", InvalidCharacter(' ')),
        ("1 ", InvalidCharacter(' ')),
        ("1,5", InvalidCharacter(',')),
        ("1_000", InvalidCharacter('_')),
        ("0x10", InvalidCharacter('x')),
        ("NaN", InvalidCharacter('N')),
        ("inf", InvalidCharacter('i')),
        ("١", InvalidCharacter('١')),
        ("1.2.3", Malformed("more than one decimal point")),
        ("1.", Malformed("no digits after the decimal point")),
        (".5", Malformed("no digits before the decimal point")),
        (".", Malformed("no digits before the decimal point")),
        ("1.000000001", TooManyDecimals { decimals: 9 }),
        ("0.000000010", TooManyDecimals { decimals: 9 }),
        ("21000000.00000001", TooLarge),
        ("21000001", TooLarge),
        ("18446744073709551616", TooLarge),
        ("99999999999999999999999999999999999999", TooLarge),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_amount(text).as_ref(), Err(expected), "{text:?}");
    }
    assert_eq!(parse_amount("-1").unwrap_err().kind(), "signed");
}

#[test]
fn format_amount_trims_trailing_zeros() {
    assert_eq!(format_amount(0), "0");
    assert_eq!(format_amount(1), "0.00000001");
    assert_eq!(format_amount(COIN / 2 * 3), "1.5");
    assert_eq!(format_amount(12 * COIN), "12");
    assert_eq!(format_amount(COIN + 1), "1.00000001");
    assert_eq!(format_amount(10_000_000), "0.1");
    assert_eq!(format_amount(MAX_MONEY), "21000000");
    assert_eq!(format_amount(u64::MAX), "184467440737.09551615");
}

#[test]
fn amount_from_json_takes_strings_and_numbers() {
    use serde_json::{json, Value};
    let number = |text: &str| amount_from_json(&serde_json::from_str::<Value>(text).unwrap());
    assert_eq!(amount_from_json(&json!("0.1")), Ok(10_000_000));
    assert_eq!(amount_from_json(&json!(0.1)), Ok(10_000_000));
    assert_eq!(amount_from_json(&json!(12)), Ok(12 * COIN));
    assert_eq!(amount_from_json(&json!(1.5)), Ok(COIN / 2 * 3));
    assert_eq!(number("0.00000001"), Ok(1));
    assert_eq!(number("1e-8"), Ok(1));
    assert_eq!(number("1.5e-7"), Ok(15));
    assert_eq!(number("1E2"), Ok(100 * COIN));
    assert_eq!(number("2.1e7"), Ok(MAX_MONEY));
    assert_eq!(number("0.0"), Ok(0));
    assert_eq!(number("20999999.99999999"), Ok(MAX_MONEY - 1));
    assert_eq!(
        number("0.000000001"),
        Err(AmountError::TooManyDecimals { decimals: 9 })
    );
    assert_eq!(
        number("1e-300"),
        Err(AmountError::TooManyDecimals { decimals: 300 })
    );
    assert_eq!(number("1e300"), Err(AmountError::TooLarge));
    assert_eq!(number("1e20"), Err(AmountError::TooLarge));
    assert_eq!(number("21000000.00000001"), Err(AmountError::TooLarge));
    assert_eq!(number("-1"), Err(AmountError::Signed));
    assert_eq!(number("-1e-8"), Err(AmountError::Signed));
    assert_eq!(number("-0.0"), Err(AmountError::Signed));
    assert_eq!(amount_from_json(&json!("1e-8")), Err(AmountError::Exponent));
    assert_eq!(
        amount_from_json(&json!(true)),
        Err(AmountError::NotAnAmount("a boolean"))
    );
    assert_eq!(
        amount_from_json(&Value::Null),
        Err(AmountError::NotAnAmount("null"))
    );
    assert_eq!(
        amount_from_json(&json!([1])),
        Err(AmountError::NotAnAmount("an array"))
    );
    assert_eq!(
        amount_from_json(&json!({"a": 1})),
        Err(AmountError::NotAnAmount("an object"))
    );
}

#[test]
fn exponents_expand_exactly() {
    let expand = |t: &str| expand_exponent(t).map(|c| c.into_owned());
    assert_eq!(expand("12.5").as_deref(), Ok("12.5"));
    assert_eq!(expand("1e-8").as_deref(), Ok("0.00000001"));
    assert_eq!(expand("1.5e-7").as_deref(), Ok("0.00000015"));
    assert_eq!(
        expand("1.2345678901234568e+17").as_deref(),
        Ok("123456789012345680")
    );
    assert_eq!(expand("12.5e1").as_deref(), Ok("125"));
    assert_eq!(expand("12.5e0").as_deref(), Ok("12.5"));
    assert_eq!(expand("0.05e2").as_deref(), Ok("5"));
    assert_eq!(expand("00.0050e1").as_deref(), Ok("0.05"));
    assert_eq!(expand("0e5").as_deref(), Ok("0"));
    assert_eq!(expand("1.50e-7").as_deref(), Ok("0.00000015"));
    assert_eq!(
        expand("1ex"),
        Err(AmountError::Malformed("invalid exponent"))
    );
    assert_eq!(expand("e5"), Err(AmountError::Malformed("invalid number")));
    assert_eq!(
        expand("1.x5e5"),
        Err(AmountError::Malformed("invalid number"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn format_then_parse_round_trips(units in 0..=MAX_MONEY) {
        let text = format_amount(units);
        prop_assert_eq!(parse_amount(&text), Ok(units));
        prop_assert!(!text.contains('.') || !text.ends_with('0'));
    }

    #[test]
    fn json_strings_and_numbers_round_trip(units in 0..=MAX_MONEY) {
        let text = format_amount(units);
        prop_assert_eq!(amount_from_json(&serde_json::Value::String(text.clone())), Ok(units));
        let number: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert!(number.is_number());
        prop_assert_eq!(amount_from_json(&number), Ok(units));
    }

    #[test]
    fn small_amounts_round_trip(units in 0..10 * COIN) {
        prop_assert_eq!(parse_amount(&format_amount(units)), Ok(units));
    }

    #[test]
    fn accepted_text_is_canonicalised_by_format(text in "[0-9]{0,9}(\\.[0-9]{0,9})?") {
        if let Ok(units) = parse_amount(&text) {
            prop_assert_eq!(parse_amount(&format_amount(units)), Ok(units));
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(text in "\\PC{0,40}") {
        let _ = parse_amount(&text);
        let _ = expand_exponent(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn payments_validate_or_report_the_shortfall(
        values in proptest::collection::vec(1u64..10 * COIN, 0..8),
        amount in 1u64..20 * COIN,
        fee in MIN_FEE..COIN,
    ) {
        let wallet = Wallet::generate();
        let spendable = coins(&wallet, &values);
        let available: u64 = values.iter().sum();
        match wallet.build_payment(MAGIC, &spendable, recipient(), amount, fee) {
            Ok(tx) => {
                prop_assert!(available >= amount + fee);
                prop_assert_eq!(tx.validate(MAGIC, &view(&spendable)), Ok(fee));
                prop_assert_eq!(tx.outputs[0], TxOut { value: amount, address: recipient() });
            }
            Err(WalletError::InsufficientFunds { available: a, needed }) => {
                prop_assert_eq!(a, available);
                prop_assert_eq!(needed, amount + fee);
                prop_assert!(available < needed);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}
