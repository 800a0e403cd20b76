//! `/run/nsproxy/.cni/<container>.json`: a container the CNI plugin
//! attached to an account (written by the plugin on ADD, removed on DEL;
//! the account's daemon reads them to attach again after a restart, and
//! `status` lists them).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container: String,
    pub account: String,
    /// The container's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The TUN's name inside it (`CNI_IFNAME`).
    pub ifname: String,
    /// The CNI network's name.
    pub network: String,
    pub attached_at_unix: u64,
}
