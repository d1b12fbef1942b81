//! A minimal wallet: one key, its address, payments and TIME amounts as text.
//!
//! # Key file
//! The wallet key lives in `<data_dir>/wallet_key` ([`WALLET_KEY_FILE`]) and
//! follows the rules of the node key file ([`crate::crypto::identity`]): 64
//! hex digits of an ed25519 seed, created with mode 0600 when missing; a file
//! that cannot be read, is accessible by group or others, or is not a key is
//! a typed error and is never replaced. The secret key is zeroized when the
//! wallet is dropped (the underlying key types zeroize on drop) and never
//! logged: `Debug` prints the address only.
//!
//! # Payments
//! [`Wallet::build_payment`] selects coins deterministically (largest first,
//! ties by outpoint), pays one output to the recipient, returns any change to
//! the wallet's own address and signs every input with
//! [`Transaction::sign`]. The fee is exactly the one requested.
//!
//! # Amounts
//! 1 TIME = 10^8 units ([`COIN`]). Amounts are written as decimal TIME text
//! (`"12"`, `"0.5"`, `"1.00000001"`) and converted exactly, without floating
//! point: [`parse_amount`], [`format_amount`] and, for JSON-RPC parameters,
//! [`amount_from_json`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::chain::address::Address;
use crate::chain::transaction::{
    OutPoint, Transaction, TxError, TxIn, TxOut, COIN, MAX_INPUTS, MAX_MONEY, MAX_TX_BYTES, MIN_FEE,
};
use crate::crypto::identity::{read_secret_file, write_secret_file};
use crate::crypto::{KeyFileError, PublicKey, SecretKey};

/// File name of the wallet key inside the data dir.
pub const WALLET_KEY_FILE: &str = "wallet_key";

/// Most decimals of a TIME amount (1 unit = 0.00000001 TIME).
pub const AMOUNT_DECIMALS: usize = 8;

/// Why a wallet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The key file could not be read, created or trusted.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// A payment of zero units.
    #[error("the amount must be greater than zero")]
    ZeroAmount,
    /// `amount + fee` overflows or exceeds the money supply.
    #[error("amount {amount} plus fee {fee} exceeds the money supply of {MAX_MONEY} units")]
    AmountTooLarge {
        /// The requested amount, in units.
        amount: u64,
        /// The requested fee, in units.
        fee: u64,
    },
    /// The fee is below [`MIN_FEE`].
    #[error("fee {fee} is below the minimum fee of {min_fee} units")]
    FeeTooLow {
        /// The requested fee, in units.
        fee: u64,
        /// The minimum fee, in units.
        min_fee: u64,
    },
    /// The spendable outputs do not cover `amount + fee`.
    #[error("insufficient funds: {available} units available, {needed} needed")]
    InsufficientFunds {
        /// Sum of the usable spendable outputs, in units.
        available: u64,
        /// `amount + fee`, in units.
        needed: u64,
    },
    /// Covering `amount + fee` takes more inputs than one transaction may
    /// hold (by count or by encoded size).
    #[error("the payment needs {needed} inputs, more than the {max} one transaction can hold")]
    TooManyInputs {
        /// Inputs needed with the largest outputs first.
        needed: usize,
        /// Most inputs that fit in one transaction.
        max: usize,
    },
    /// The built transaction breaks a transaction rule (a bug if it happens).
    #[error("the built transaction is invalid: {0}")]
    Transaction(#[from] TxError),
}

impl WalletError {
    /// A short stable name, for logs, metrics and RPC errors.
    pub fn kind(&self) -> &'static str {
        match self {
            WalletError::KeyFile(KeyFileError::Io { .. }) => "key_file_io",
            WalletError::KeyFile(KeyFileError::InsecurePermissions { .. }) => {
                "key_file_permissions"
            }
            WalletError::KeyFile(KeyFileError::Corrupt { .. }) => "key_file_corrupt",
            WalletError::ZeroAmount => "zero_amount",
            WalletError::AmountTooLarge { .. } => "amount_too_large",
            WalletError::FeeTooLow { .. } => "fee_too_low",
            WalletError::InsufficientFunds { .. } => "insufficient_funds",
            WalletError::TooManyInputs { .. } => "too_many_inputs",
            WalletError::Transaction(_) => "invalid_transaction",
        }
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// No text at all.
    #[error("the amount is empty")]
    Empty,
    /// A leading `+` or `-`.
    #[error("the amount must not have a sign")]
    Signed,
    /// An exponent (`1e-8`): write the decimal digits.
    #[error("the amount must not have an exponent")]
    Exponent,
    /// A character that is neither a digit nor the decimal point.
    #[error("invalid character {0:?} in amount")]
    InvalidCharacter(char),
    /// Not `digits` or `digits.digits`.
    #[error("malformed amount: {0}")]
    Malformed(&'static str),
    /// More than [`AMOUNT_DECIMALS`] decimals.
    #[error("the amount has {decimals} decimals, at most {AMOUNT_DECIMALS} are allowed")]
    TooManyDecimals {
        /// Decimals given.
        decimals: usize,
    },
    /// Above [`MAX_MONEY`].
    #[error("the amount exceeds the money supply of {} TIME", MAX_MONEY / COIN)]
    TooLarge,
    /// A JSON value that is neither a string nor a number.
    #[error("the amount must be a JSON string or number, not {0}")]
    NotAnAmount(&'static str),
}

impl AmountError {
    /// A short stable name, for logs and RPC errors.
    pub fn kind(&self) -> &'static str {
        match self {
            AmountError::Empty => "empty",
            AmountError::Signed => "signed",
            AmountError::Exponent => "exponent",
            AmountError::InvalidCharacter(_) => "invalid_character",
            AmountError::Malformed(_) => "malformed",
            AmountError::TooManyDecimals { .. } => "too_many_decimals",
            AmountError::TooLarge => "too_large",
            AmountError::NotAnAmount(_) => "not_an_amount",
        }
    }
}

/// A wallet: one secret key and its address.
///
/// # Security
/// The secret key is zeroized on drop (ed25519-dalek's `SigningKey` and k256's
/// `SigningKey` zeroize themselves); `Debug` prints the address only.
pub struct Wallet {
    key: SecretKey,
    address: Address,
    /// Held from coin selection until the payment is pooled, so two
    /// concurrent payments never pick the same coins.
    payments: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wallet")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Wallet {
    /// A wallet around `key`. Key files hold ed25519 keys, but a wallet built
    /// here may use either signature scheme.
    pub fn from_secret(key: SecretKey) -> Self {
        let address = Address::from_public_key(&key.public_key());
        Wallet {
            key,
            address,
            payments: tokio::sync::Mutex::new(()),
        }
    }

    /// A fresh ed25519 wallet from the operating system's RNG (not saved).
    pub fn generate() -> Self {
        Self::from_secret(SecretKey::Ed25519(ed25519_dalek::SigningKey::generate(
            &mut OsRng,
        )))
    }

    /// The key file of the wallet in `data_dir`.
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join(WALLET_KEY_FILE)
    }

    /// Loads the wallet key from `data_dir/wallet_key`, or creates that file
    /// with a new ed25519 key (mode 0600) when it does not exist. The data
    /// dir itself must exist.
    ///
    /// # Errors
    /// [`WalletError::KeyFile`] when the file exists but cannot be read, is
    /// accessible by group or others, or does not hold exactly 64 hex digits
    /// (it is never replaced), or when a new file cannot be written.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, WalletError> {
        let path = Self::key_path(data_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Self::load(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
                let seed = Zeroizing::new(signing.to_bytes());
                let mut text = Zeroizing::new([0u8; 65]);
                hex::encode_to_slice(seed.as_ref(), &mut text[..64]).map_err(|_| {
                    KeyFileError::Corrupt {
                        path: path.clone(),
                        reason: "cannot encode the new key",
                    }
                })?;
                text[64] = b'\n';
                write_secret_file(&path, text.as_ref())?;
                Ok(Self::from_secret(SecretKey::Ed25519(signing)))
            }
            Err(source) => Err(KeyFileError::Io { path, source }.into()),
        }
    }

    /// Loads the wallet from an existing key file (64 hex digits of an
    /// ed25519 seed, not accessible by group or others).
    ///
    /// # Errors
    /// See [`Wallet::load_or_create`].
    pub fn load(path: &Path) -> Result<Self, WalletError> {
        let seed = read_secret_file(path)?;
        Ok(Self::from_secret(SecretKey::Ed25519(
            ed25519_dalek::SigningKey::from_bytes(&seed),
        )))
    }

    /// Serialises payments: hold the guard from coin selection until the
    /// payment is in the mempool (which then marks its coins spent).
    pub async fn lock_payments(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.payments.lock().await
    }

    /// The wallet's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The wallet's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The wallet's secret key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// The input spending `prevout` with this wallet's key, unsigned.
    fn input(&self, prevout: OutPoint) -> TxIn {
        TxIn {
            prevout,
            scheme: self.key.scheme(),
            public_key: self.key.public_key().to_bytes(),
            signature: [0u8; 64],
        }
    }

    /// Most inputs of this wallet's key that fit in one transaction with two
    /// outputs, by count ([`MAX_INPUTS`]) and by size ([`MAX_TX_BYTES`]).
    fn input_limit(&self, to: Address) -> usize {
        let out = TxOut {
            value: 1,
            address: to,
        };
        let mut tx = Transaction {
            version: 1,
            inputs: Vec::new(),
            outputs: vec![out, out],
            nonce: 0,
        };
        let base = tx.size();
        tx.inputs.push(self.input(OutPoint {
            txid: [0; 32],
            index: 0,
        }));
        let per_input = tx.size().saturating_sub(base).max(1);
        MAX_INPUTS.min(MAX_TX_BYTES.saturating_sub(base) / per_input)
    }

    /// Builds and signs a transaction paying `amount` units to `to` with a
    /// fee of exactly `fee` units, spending outputs from `spendable`.
    ///
    /// Coin selection is deterministic: the usable outputs (locked to this
    /// wallet's address, of a value between 1 and [`MAX_MONEY`], each
    /// outpoint once) are sorted by value, largest first, ties by outpoint,
    /// and taken until `amount + fee` is covered. The first output pays `to`;
    /// a second one returns the change, if any, to [`Wallet::address`]. The
    /// nonce is random, so two identical payments get distinct ids.
    ///
    /// # Errors
    /// [`WalletError::ZeroAmount`], [`WalletError::AmountTooLarge`] (the sum
    /// overflows or exceeds [`MAX_MONEY`]), [`WalletError::FeeTooLow`],
    /// [`WalletError::InsufficientFunds`] or [`WalletError::TooManyInputs`].
    pub fn build_payment(
        &self,
        magic: [u8; 4],
        spendable: &[(OutPoint, TxOut)],
        to: Address,
        amount: u64,
        fee: u64,
    ) -> Result<Transaction, WalletError> {
        if amount == 0 {
            return Err(WalletError::ZeroAmount);
        }
        let needed = match amount.checked_add(fee) {
            Some(needed) if needed <= MAX_MONEY => needed,
            _ => return Err(WalletError::AmountTooLarge { amount, fee }),
        };
        if fee < MIN_FEE {
            return Err(WalletError::FeeTooLow {
                fee,
                min_fee: MIN_FEE,
            });
        }

        let mut candidates: Vec<(OutPoint, u64)> = spendable
            .iter()
            .filter(|(_, out)| {
                out.address == self.address && out.value > 0 && out.value <= MAX_MONEY
            })
            .map(|(outpoint, out)| (*outpoint, out.value))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut seen = HashSet::with_capacity(candidates.len());
        candidates.retain(|(outpoint, _)| seen.insert(*outpoint));

        let mut selected = Vec::new();
        let mut total: u64 = 0;
        for (outpoint, value) in &candidates {
            if total >= needed {
                break;
            }
            selected.push(*outpoint);
            total = total.saturating_add(*value);
        }
        if total < needed {
            return Err(WalletError::InsufficientFunds {
                available: total,
                needed,
            });
        }
        let max = self.input_limit(to);
        if selected.len() > max {
            return Err(WalletError::TooManyInputs {
                needed: selected.len(),
                max,
            });
        }

        // total ≥ needed = amount + fee, so the change cannot underflow.
        let change = total - needed;
        let mut outputs = vec![TxOut {
            value: amount,
            address: to,
        }];
        if change > 0 {
            outputs.push(TxOut {
                value: change,
                address: self.address,
            });
        }
        let mut tx = Transaction {
            version: 1,
            inputs: selected.into_iter().map(|op| self.input(op)).collect(),
            outputs,
            nonce: rand::thread_rng().gen(),
        };
        tx.check_structure(false)?;
        let keys = vec![&self.key; tx.inputs.len()];
        tx.sign(magic, &keys);
        Ok(tx)
    }
}

/// Parses decimal TIME text (`"12"`, `"0.5"`, `"1.00000001"`) into units,
/// exactly: digits, optionally a point and 1 to [`AMOUNT_DECIMALS`] more
/// digits; no sign, exponent, spaces or separators; at most [`MAX_MONEY`].
///
/// # Errors
/// An [`AmountError`] naming what is wrong.
pub fn parse_amount(text: &str) -> Result<u64, AmountError> {
    if text.is_empty() {
        return Err(AmountError::Empty);
    }
    if text.starts_with(['+', '-']) {
        return Err(AmountError::Signed);
    }
    if text.contains(['e', 'E']) {
        return Err(AmountError::Exponent);
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
        return Err(AmountError::InvalidCharacter(c));
    }
    let (whole, frac) = match text.split_once('.') {
        None => (text, ""),
        Some((_, frac)) if frac.contains('.') => {
            return Err(AmountError::Malformed("more than one decimal point"))
        }
        Some((whole, "")) if !whole.is_empty() => {
            return Err(AmountError::Malformed("no digits after the decimal point"))
        }
        Some(parts) => parts,
    };
    if whole.is_empty() {
        return Err(AmountError::Malformed("no digits before the decimal point"));
    }
    if frac.len() > AMOUNT_DECIMALS {
        return Err(AmountError::TooManyDecimals {
            decimals: frac.len(),
        });
    }
    let mut units: u64 = 0;
    for digit in whole.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u64::from(digit - b'0')))
            .filter(|u| *u <= MAX_MONEY / COIN)
            .ok_or(AmountError::TooLarge)?;
    }
    let mut frac_units: u64 = 0;
    for i in 0..AMOUNT_DECIMALS {
        let digit = frac.as_bytes().get(i).map_or(0, |d| u64::from(d - b'0'));
        frac_units = frac_units * 10 + digit;
    }
    units = units
        .checked_mul(COIN)
        .and_then(|u| u.checked_add(frac_units))
        .filter(|u| *u <= MAX_MONEY)
        .ok_or(AmountError::TooLarge)?;
    Ok(units)
}

/// Formats `units` as decimal TIME text without trailing zeros: `"12"`,
/// `"1.5"`, `"0.00000001"`. [`parse_amount`] reads it back exactly.
pub fn format_amount(units: u64) -> String {
    let whole = units / COIN;
    let frac = units % COIN;
    if frac == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{frac:0width$}", width = AMOUNT_DECIMALS);
    text.trim_end_matches('0').to_owned()
}

/// Reads an amount from a JSON-RPC parameter: a string of decimal TIME text,
/// or a JSON number, read through its textual form (so `0.1` is exactly
/// 10,000,000 units; an exponent as in `1e-8`, which is how serde_json
/// prints small numbers, is expanded exactly).
///
/// # Errors
/// An [`AmountError`]: see [`parse_amount`]; any other JSON type is
/// [`AmountError::NotAnAmount`].
pub fn amount_from_json(value: &serde_json::Value) -> Result<u64, AmountError> {
    match value {
        serde_json::Value::String(text) => parse_amount(text),
        serde_json::Value::Number(number) => {
            let text = number.to_string();
            parse_amount(&expand_exponent(&text)?)
        }
        serde_json::Value::Null => Err(AmountError::NotAnAmount("null")),
        serde_json::Value::Bool(_) => Err(AmountError::NotAnAmount("a boolean")),
        serde_json::Value::Array(_) => Err(AmountError::NotAnAmount("an array")),
        serde_json::Value::Object(_) => Err(AmountError::NotAnAmount("an object")),
    }
}

/// Largest exponent magnitude expanded; beyond it a non-zero amount is either
/// too large or too precise.
const MAX_EXPANDED_EXPONENT: i64 = 40;

/// Rewrites number text with an exponent (`1.5e-7`, `1e+20`) as plain
/// decimal text, exactly; text without one is returned unchanged.
fn expand_exponent(text: &str) -> Result<Cow<'_, str>, AmountError> {
    let Some((mantissa, exponent)) = text.split_once(['e', 'E']) else {
        return Ok(Cow::Borrowed(text));
    };
    if mantissa.starts_with(['+', '-']) {
        return Err(AmountError::Signed);
    }
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = [whole, frac].concat();
    if digits.is_empty() || !digits.bytes().all(|d| d.is_ascii_digit()) {
        return Err(AmountError::Malformed("invalid number"));
    }
    let exponent: i64 = exponent
        .parse()
        .map_err(|_| AmountError::Malformed("invalid exponent"))?;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(Cow::Borrowed("0"));
    }
    if exponent > MAX_EXPANDED_EXPONENT {
        return Err(AmountError::TooLarge);
    }
    if exponent < -MAX_EXPANDED_EXPONENT {
        return Err(AmountError::TooManyDecimals {
            decimals: usize::try_from(exponent.unsigned_abs()).unwrap_or(usize::MAX),
        });
    }
    // The value is digits × 10^(exponent − frac.len()): its decimal point
    // sits `point` places from the left of the digits.
    let shift = i64::try_from(frac.len()).map_err(|_| AmountError::Malformed("invalid number"))?;
    let len = i64::try_from(digits.len()).map_err(|_| AmountError::Malformed("invalid number"))?;
    let point = len + exponent - shift;
    let mut plain = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point >= len {
        format!("{digits}{}", "0".repeat((point - len) as usize))
    } else {
        let (head, tail) = digits.split_at(point as usize);
        format!("{head}.{tail}")
    };
    if plain.contains('.') {
        let trimmed = plain.trim_end_matches('0').trim_end_matches('.').len();
        plain.truncate(trimmed);
    }
    Ok(Cow::Owned(plain))
}

#[cfg(test)]
mod tests {
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
        std::os::unix::fs::symlink(dir.path().join("nowhere"), linked.join(WALLET_KEY_FILE))
            .unwrap();
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
        let wallet = Wallet::from_secret(SecretKey::Ed25519(
            ed25519_dalek::SigningKey::from_bytes(&seed),
        ));
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
}
