//! Chains built in-process for the end-to-end tests: a data dir holding a
//! seed chain whose only masternode is the dir's own node key, ready for a
//! `timed run` on that dir (or for a [`Chain`] reopened on it).

use std::path::Path;
use std::time::Duration;

use timed::chain::genesis::{Genesis, GenesisMasternode, DEVNET_GENESIS_TIMESTAMP};
use timed::chain::votes::Tier;
use timed::chain::{TxOut, COIN};
use timed::crypto::NodeIdentity;
use timed::params::Network;
use timed::state::{Chain, ChainOptions};
use timed::wallet::Wallet;

/// A seed chain built by [`seed_chain`].
pub struct SeedChain {
    /// Its genesis.
    pub genesis: Genesis,
    /// The dir's node key: the only masternode.
    pub identity: NodeIdentity,
    /// The dir's wallet, which the genesis funds.
    pub wallet: Wallet,
    /// The bytes of every stored block, genesis first.
    pub raw_blocks: Vec<Vec<u8>>,
}

impl SeedChain {
    /// The `[chain]` section of a config for nodes of this chain.
    pub fn chain_section(&self) -> String {
        timed::cli::devnet::devnet_chain_section(&self.genesis)
    }
}

/// Builds in `dir` a chain of `blocks` blocks (genesis aside) in past slots
/// of `block_interval` seconds, each holding one payment of 1 TIME from the
/// dir's wallet to another address. Its genesis (at
/// [`DEVNET_GENESIS_TIMESTAMP`]) has the dir's node key (`node_key`, made if
/// missing) as its only (Free) masternode and ten outputs of 1,000 TIME for
/// the dir's wallet (made if missing). The chain is closed on return.
pub fn seed_chain(dir: &Path, block_interval: u64, blocks: u64) -> SeedChain {
    std::fs::create_dir_all(dir).unwrap();
    let identity = NodeIdentity::load_or_generate(&dir.join("node_key")).unwrap();
    let wallet = Wallet::load_or_create(dir).unwrap();
    let genesis = Genesis::new(
        Network::Devnet,
        DEVNET_GENESIS_TIMESTAMP,
        block_interval,
        vec![GenesisMasternode {
            public_key: *identity.public_key().as_bytes(),
            tier: Tier::Free,
        }],
        vec![
            TxOut {
                value: 1_000 * COIN,
                address: wallet.address(),
            };
            10
        ],
    )
    .unwrap();
    let chain = Chain::open(dir, genesis.clone(), &identity, ChainOptions::default()).unwrap();
    let other = Wallet::generate().address();
    for slot in 1..=blocks {
        let spendable = chain.spendable(&wallet.address()).unwrap();
        let tx = wallet
            .build_payment(chain.magic(), &spendable, other, COIN, 1_000)
            .unwrap();
        chain.submit_tx(tx).unwrap();
        let block = chain
            .produce_if_scheduled(genesis.slot_start(slot))
            .unwrap();
        assert!(
            block.is_some_and(|b| b.transactions.len() == 1),
            "slot {slot}"
        );
    }
    let raw_blocks = chain.store().raw_blocks(0, usize::MAX, usize::MAX).unwrap();
    chain.store().close(Duration::from_secs(5));
    SeedChain {
        genesis,
        identity,
        wallet,
        raw_blocks,
    }
}
