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
    /// An unsigned input spending `prevout` with this wallet's key (the
    /// signature is zero until [`Wallet::sign_all`]).
    pub fn input(&self, prevout: OutPoint) -> TxIn {
        TxIn {
            prevout,
            scheme: self.key.scheme(),
            public_key: self.key.public_key().to_bytes(),
            signature: [0u8; 64],
        }
    }

    /// Signs every input of `tx` with this wallet's key (the caller checks
    /// that each spends an output of [`Wallet::address`]).
    pub fn sign_all(&self, magic: [u8; 4], tx: &mut Transaction) {
        let keys = vec![&self.key; tx.inputs.len()];
        tx.sign(magic, &keys);
    }

    /// Most inputs of this wallet's key that fit in one transaction with two
    /// outputs, by count ([`MAX_INPUTS`]) and by size ([`MAX_TX_BYTES`]).
    pub fn input_limit(&self, to: Address) -> usize {
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
#[cfg(test)]
mod tests;
