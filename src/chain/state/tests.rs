//! Unit tests of the chain state.
use super::*;
use crate::chain::genesis::Genesis;

#[test]
fn a_fresh_chain_starts_at_its_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity::generate();
    let genesis = Genesis::devnet(1, &[*identity.public_key().as_bytes()], &[]).unwrap();
    let chain = Chain::open(
        dir.path(),
        genesis.clone(),
        &identity,
        ChainOptions::default(),
    )
    .unwrap();
    assert_eq!(chain.tip().height, 0);
    assert_eq!(chain.tip().hash, genesis.hash());
    assert!(chain.is_masternode());
}
