//! UTXO transactions, TIME Coin style, with scheme-tagged input signatures.
//!
//! # Ids and signatures
//! * `txid = blake3::derive_key("timed v1 txid", encode(tx with every input
//!   signature zeroed))`: signatures are not part of the id, so nobody can
//!   change a txid by re-encoding a signature.
//! * Input `i` signs `blake3::derive_key("timed v1 sighash", magic || txid ||
//!   i:u32le)` with the scheme its input names (ed25519, or secp256k1 ECDSA
//!   with low S), binding the network and the input position.
//! * The public key of an input must hash to the address of the output it
//!   spends ([`Address::from_public_key`]).
//!
//! # Amounts
//! 1 TIME = 10^8 units. Sums are checked: an overflow is an error, never a
//! wrap. `fee = inputs − outputs` must be at least [`MIN_FEE`].

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::address::Address;
use crate::crypto::{PublicKey, SecretKey, Signature, SignatureError, SignatureScheme};
use crate::encoding;

/// Units in one TIME.
pub const COIN: u64 = 100_000_000;

/// The smallest fee a transaction must pay, in units (0.00001 TIME).
pub const MIN_FEE: u64 = 1_000;

/// Most inputs of one transaction.
pub const MAX_INPUTS: usize = 1_000;

/// Most outputs of one transaction.
pub const MAX_OUTPUTS: usize = 1_000;

/// Largest encoded transaction, in bytes (Bitcoin's standardness limit).
pub const MAX_TX_BYTES: usize = 100_000;

/// The total supply can never exceed this (21 million TIME), which also
/// bounds every sum.
pub const MAX_MONEY: u64 = 21_000_000 * COIN;

/// A transaction id.
pub type Txid = [u8; 32];

/// A reference to an output of an earlier transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutPoint {
    /// The transaction.
    pub txid: Txid,
    /// The output's position in it.
    pub index: u32,
}

/// An input: the output it spends and the proof that its owner signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxIn {
    /// The output spent.
    pub prevout: OutPoint,
    /// The signature scheme of `public_key` and `signature`.
    pub scheme: SignatureScheme,
    /// The owner's public key (32 bytes ed25519, 33 bytes secp256k1).
    #[serde(with = "serde_bytes")]
    pub public_key: Vec<u8>,
    /// The signature over the input's sighash.
    #[serde(with = "crate::encoding::fixed64")]
    pub signature: [u8; 64],
}

/// An output: an amount locked to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOut {
    /// Units.
    pub value: u64,
    /// Who can spend it.
    pub address: Address,
}

/// A transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Format version (1).
    pub version: u32,
    /// What is spent (empty only in the genesis allocation).
    pub inputs: Vec<TxIn>,
    /// What is created.
    pub outputs: Vec<TxOut>,
    /// Free field so that identical payments get distinct ids.
    pub nonce: u64,
}

/// Why a transaction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// Unknown version.
    #[error("unsupported transaction version {0}")]
    Version(u32),
    /// No inputs (outside genesis) or no outputs.
    #[error("a transaction needs at least one input and one output")]
    Empty,
    /// Too many inputs or outputs, or too many bytes.
    #[error("transaction exceeds a limit: {0}")]
    TooLarge(&'static str),
    /// An output of zero units, or above the money supply.
    #[error("output {index} has an invalid value")]
    BadValue {
        /// The output.
        index: usize,
    },
    /// A sum overflowed or exceeded the money supply.
    #[error("amounts overflow")]
    Overflow,
    /// The same output spent twice within the transaction.
    #[error("output {0:?} spent twice in one transaction")]
    DuplicateInput(OutPoint),
    /// The spent output does not exist or is already spent.
    #[error("input {index} spends a missing or spent output")]
    MissingInput {
        /// The input.
        index: usize,
    },
    /// The input's key does not own the spent output.
    #[error("input {index}: the key does not own the spent output")]
    WrongOwner {
        /// The input.
        index: usize,
    },
    /// The input's key or signature is invalid.
    #[error("input {index}: {error}")]
    Signature {
        /// The input.
        index: usize,
        /// Why.
        error: SignatureError,
    },
    /// Outputs exceed inputs, or the fee is below the minimum.
    #[error("insufficient fee: inputs {inputs}, outputs {outputs}, minimum fee {min_fee}")]
    InsufficientFee {
        /// Sum of the inputs.
        inputs: u64,
        /// Sum of the outputs.
        outputs: u64,
        /// The minimum fee.
        min_fee: u64,
    },
    /// The transaction cannot be encoded.
    #[error("transaction cannot be encoded")]
    Encoding,
}

impl TxError {
    /// A short stable name, for logs, metrics and RPC errors.
    pub fn kind(&self) -> &'static str {
        match self {
            TxError::Version(_) => "version",
            TxError::Empty => "empty",
            TxError::TooLarge(_) => "too_large",
            TxError::BadValue { .. } => "bad_value",
            TxError::Overflow => "overflow",
            TxError::DuplicateInput(_) => "duplicate_input",
            TxError::MissingInput { .. } => "missing_input",
            TxError::WrongOwner { .. } => "wrong_owner",
            TxError::Signature { .. } => "bad_signature",
            TxError::InsufficientFee { .. } => "insufficient_fee",
            TxError::Encoding => "encoding",
        }
    }
}

/// Where validation looks up the outputs a transaction spends.
pub trait UtxoView {
    /// The unspent output at `outpoint`, if any.
    fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut>;
}

impl UtxoView for std::collections::HashMap<OutPoint, TxOut> {
    fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.get(outpoint).copied()
    }
}

fn checked_sum(values: impl Iterator<Item = u64>) -> Result<u64, TxError> {
    let mut total: u64 = 0;
    for v in values {
        total = total.checked_add(v).ok_or(TxError::Overflow)?;
        if total > MAX_MONEY {
            return Err(TxError::Overflow);
        }
    }
    Ok(total)
}

/// `blake3::derive_key("timed v1 sighash", magic || txid || index_le32)`.
fn sighash_of(magic: [u8; 4], txid: &Txid, index: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("timed v1 sighash");
    h.update(&magic);
    h.update(txid);
    h.update(&index.to_le_bytes());
    *h.finalize().as_bytes()
}

impl Transaction {
    fn unsigned(&self) -> Transaction {
        let mut t = self.clone();
        for input in &mut t.inputs {
            input.signature = [0u8; 64];
        }
        t
    }

    /// The transaction id (signatures excluded).
    pub fn txid(&self) -> Txid {
        let bytes = encoding::encode_value(&self.unsigned()).unwrap_or_default();
        blake3::derive_key("timed v1 txid", &bytes)
    }

    /// The digest input `index` signs.
    pub fn sighash(&self, magic: [u8; 4], index: u32) -> [u8; 32] {
        sighash_of(magic, &self.txid(), index)
    }

    /// Signs every input with `keys[i]` (one key per input, in order).
    pub fn sign(&mut self, magic: [u8; 4], keys: &[&SecretKey]) {
        for (i, key) in keys.iter().enumerate().take(self.inputs.len()) {
            self.inputs[i].scheme = key.scheme();
            self.inputs[i].public_key = key.public_key().to_bytes();
        }
        // The txid excludes signatures: compute it once, not per input.
        let txid = self.txid();
        for (i, key) in keys.iter().enumerate().take(self.inputs.len()) {
            let digest = sighash_of(magic, &txid, i as u32);
            self.inputs[i].signature = key.sign(&digest).to_bytes();
        }
    }

    /// The encoded size in bytes.
    pub fn size(&self) -> usize {
        encoding::encode_value(self)
            .map(|b| b.len())
            .unwrap_or(usize::MAX)
    }

    /// Checks what needs no chain state: version, counts, size, values,
    /// duplicate inputs. `genesis` allows a transaction without inputs.
    ///
    /// # Errors
    /// The first [`TxError`] found.
    pub fn check_structure(&self, genesis: bool) -> Result<(), TxError> {
        if self.version != 1 {
            return Err(TxError::Version(self.version));
        }
        if self.outputs.is_empty() || (self.inputs.is_empty() && !genesis) {
            return Err(TxError::Empty);
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(TxError::TooLarge("inputs"));
        }
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(TxError::TooLarge("outputs"));
        }
        if self.size() > MAX_TX_BYTES {
            return Err(TxError::TooLarge("bytes"));
        }
        for (index, out) in self.outputs.iter().enumerate() {
            if out.value == 0 || out.value > MAX_MONEY {
                return Err(TxError::BadValue { index });
            }
        }
        checked_sum(self.outputs.iter().map(|o| o.value))?;
        let mut seen = HashSet::with_capacity(self.inputs.len());
        for input in &self.inputs {
            if !seen.insert(input.prevout) {
                return Err(TxError::DuplicateInput(input.prevout));
            }
        }
        Ok(())
    }

    /// Checks the structure and every input's signature against the key
    /// the input names (not who owned the outputs: that needs the UTXO set,
    /// see [`Transaction::validate`]). For a transaction of a block already
    /// applied, whose txid (which covers the keys) is known to be right.
    ///
    /// # Errors
    /// The first [`TxError`] found.
    pub fn verify_signatures(&self, magic: [u8; 4]) -> Result<(), TxError> {
        let genesis = self.inputs.is_empty();
        self.check_structure(genesis)?;
        let txid = self.txid();
        for (index, input) in self.inputs.iter().enumerate() {
            let key = PublicKey::from_bytes(input.scheme, &input.public_key)
                .map_err(|error| TxError::Signature { index, error })?;
            let signature = Signature::from_bytes(input.scheme, &input.signature)
                .map_err(|error| TxError::Signature { index, error })?;
            key.verify(&sighash_of(magic, &txid, index as u32), &signature)
                .map_err(|error| TxError::Signature { index, error })?;
        }
        Ok(())
    }

    /// Full validation against the unspent outputs in `utxos`; returns the
    /// fee.
    ///
    /// # Errors
    /// The first [`TxError`] found.
    pub fn validate(&self, magic: [u8; 4], utxos: &impl UtxoView) -> Result<u64, TxError> {
        self.validate_with(magic, utxos, true)
    }

    /// [`Transaction::validate`], with the input signatures checked only if
    /// `check_signatures` (false for a [`super::verified::VerifiedTx`],
    /// whose signatures were verified before the state was touched).
    pub(crate) fn validate_with(
        &self,
        magic: [u8; 4],
        utxos: &impl UtxoView,
        check_signatures: bool,
    ) -> Result<u64, TxError> {
        self.check_structure(false)?;
        let mut spent = Vec::with_capacity(self.inputs.len());
        let txid = self.txid();
        for (index, input) in self.inputs.iter().enumerate() {
            let prev = utxos
                .utxo(&input.prevout)
                .ok_or(TxError::MissingInput { index })?;
            let key = PublicKey::from_bytes(input.scheme, &input.public_key)
                .map_err(|error| TxError::Signature { index, error })?;
            if Address::from_public_key(&key) != prev.address {
                return Err(TxError::WrongOwner { index });
            }
            if check_signatures {
                let signature = Signature::from_bytes(input.scheme, &input.signature)
                    .map_err(|error| TxError::Signature { index, error })?;
                key.verify(&sighash_of(magic, &txid, index as u32), &signature)
                    .map_err(|error| TxError::Signature { index, error })?;
            }
            spent.push(prev.value);
        }
        let inputs = checked_sum(spent.into_iter())?;
        let outputs = checked_sum(self.outputs.iter().map(|o| o.value))?;
        match inputs.checked_sub(outputs) {
            Some(fee) if fee >= MIN_FEE => Ok(fee),
            _ => Err(TxError::InsufficientFee {
                inputs,
                outputs,
                min_fee: MIN_FEE,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const MAGIC: [u8; 4] = *b"TDEV";

    fn funded(key: &SecretKey, value: u64, n: u8) -> (HashMap<OutPoint, TxOut>, OutPoint) {
        let outpoint = OutPoint {
            txid: [n; 32],
            index: 0,
        };
        let mut utxos = HashMap::new();
        utxos.insert(
            outpoint,
            TxOut {
                value,
                address: Address::from_public_key(&key.public_key()),
            },
        );
        (utxos, outpoint)
    }

    fn spend(key: &SecretKey, prevout: OutPoint, outputs: Vec<TxOut>) -> Transaction {
        let mut tx = Transaction {
            version: 1,
            inputs: vec![TxIn {
                prevout,
                scheme: key.scheme(),
                public_key: Vec::new(),
                signature: [0; 64],
            }],
            outputs,
            nonce: 7,
        };
        tx.sign(MAGIC, &[key]);
        tx
    }

    fn to(value: u64) -> TxOut {
        TxOut {
            value,
            address: Address([9; 20]),
        }
    }

    #[test]
    fn both_schemes_spend_and_pay_a_fee() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::Secp256k1] {
            let key = SecretKey::generate(scheme);
            let (utxos, op) = funded(&key, 10 * COIN, 1);
            let tx = spend(&key, op, vec![to(9 * COIN)]);
            assert_eq!(tx.validate(MAGIC, &utxos), Ok(COIN));
            // Another network's magic invalidates every signature.
            assert!(matches!(
                tx.validate(*b"TIME", &utxos),
                Err(TxError::Signature { .. })
            ));
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        let key = SecretKey::generate(SignatureScheme::Ed25519);
        let (utxos, op) = funded(&key, 10 * COIN, 1);
        let ok = spend(&key, op, vec![to(COIN)]);
        let err = |tx: &Transaction| tx.validate(MAGIC, &utxos).unwrap_err().kind();

        let overspend = spend(&key, op, vec![to(10 * COIN)]);
        assert_eq!(err(&overspend), "insufficient_fee");
        let no_fee = spend(&key, op, vec![to(10 * COIN - MIN_FEE + 1)]);
        assert_eq!(err(&no_fee), "insufficient_fee");
        let zero = spend(&key, op, vec![to(0)]);
        assert_eq!(err(&zero), "bad_value");
        let overflow = spend(&key, op, vec![to(MAX_MONEY), to(MAX_MONEY)]);
        assert_eq!(err(&overflow), "overflow");
        let missing = spend(
            &key,
            OutPoint {
                txid: [5; 32],
                index: 0,
            },
            vec![to(1)],
        );
        assert_eq!(err(&missing), "missing_input");
        let thief = SecretKey::generate(SignatureScheme::Ed25519);
        assert_eq!(err(&spend(&thief, op, vec![to(COIN)])), "wrong_owner");
        let mut forged = ok.clone();
        forged.outputs[0].value += 1;
        assert_eq!(err(&forged), "bad_signature");
        let mut double = ok.clone();
        double.inputs.push(double.inputs[0].clone());
        assert_eq!(err(&double), "duplicate_input");
        let mut v2 = ok.clone();
        v2.version = 2;
        assert_eq!(err(&v2), "version");
        let mut empty = ok.clone();
        empty.inputs.clear();
        assert_eq!(err(&empty), "empty");
        assert!(
            empty.check_structure(true).is_ok(),
            "genesis may have no inputs"
        );
    }

    #[test]
    fn the_txid_ignores_signatures_and_covers_everything_else() {
        let key = SecretKey::generate(SignatureScheme::Secp256k1);
        let (_, op) = funded(&key, COIN, 1);
        let tx = spend(&key, op, vec![to(1000)]);
        let mut resigned = tx.clone();
        resigned.inputs[0].signature = [1; 64];
        assert_eq!(tx.txid(), resigned.txid());
        let mut other = tx.clone();
        other.nonce += 1;
        assert_ne!(tx.txid(), other.txid());
        let bytes = encoding::encode_value(&tx).unwrap();
        assert_eq!(encoding::decode_value::<Transaction>(&bytes).unwrap(), tx);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn valid_spends_conserve_value(split in proptest::collection::vec(1u64..COIN, 1..5), fee in MIN_FEE..COIN) {
            let key = SecretKey::generate(SignatureScheme::Ed25519);
            let total: u64 = split.iter().sum::<u64>() + fee;
            let (utxos, op) = funded(&key, total, 3);
            let tx = spend(&key, op, split.iter().map(|&v| to(v)).collect());
            prop_assert_eq!(tx.validate(MAGIC, &utxos), Ok(fee));
        }

        #[test]
        fn decoding_arbitrary_bytes_as_a_transaction_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(tx) = encoding::decode_value::<Transaction>(&bytes) {
                let _ = tx.validate(MAGIC, &HashMap::new());
            }
        }
    }
}
