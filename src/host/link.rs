//! The account's TUN device: created *inside* the namespace on a dedicated
//! thread, configured there over a netlink socket opened in that namespace,
//! and handed back as an fd that the host-side daemon reads and writes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use std::os::fd::OwnedFd;

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::Paths;
use crate::config::plan;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "cannot create TUN {name} in namespace {ns}: {reason} (is the tun module loaded and /dev/net/tun present?)"
    )]
    CreateTun { ns: String, name: String, reason: String },
    #[error("netlink in namespace {ns}: {op}: {reason}")]
    Netlink { ns: String, op: &'static str, reason: String },
    #[error(transparent)]
    Netns(#[from] super::netns::NetnsError),
}

#[derive(Debug, Clone)]
pub struct TunPlan {
    /// The account's named namespace, or how messages call a container's.
    pub namespace: String,
    /// A container's namespace file (the runtime's); None: the named one.
    pub path: Option<std::path::PathBuf>,
    /// The interface's name (`tun0`, or the runtime's `CNI_IFNAME`).
    pub ifname: String,
    /// The interface's IPv4 address (`dns.fake_ip_range` + 1).
    pub address: std::net::Ipv4Addr,
    pub mtu: u32,
    pub txqueuelen: u32,
    /// Route IPv6 into the TUN (`ipv6: proxy`); otherwise IPv6 is disabled
    /// on the TUN and has no route.
    pub ipv6: bool,
}

/// Creates and configures the TUN in the plan's namespace: `lo` up, `tun0`
/// up with the plan's MTU and address, the only default route via `tun0`.
/// IPv6 gets no route (so it fails at once with ENETUNREACH).
pub fn create_tun(paths: &Paths, p: &TunPlan) -> Result<OwnedFd, LinkError> {
    let plan_c = p.clone();
    match &p.path {
        None => super::netns::run_in(paths, &p.namespace, move || create_tun_here(&plan_c))?,
        Some(path) => super::netns::run_in_path(path, &p.namespace, move || create_tun_here(&plan_c))?,
    }
}

/// Whether the plan's interface exists in its namespace (CNI CHECK).
pub fn tun_present_in(paths: &Paths, p: &TunPlan) -> bool {
    let name = p.ifname.clone();
    let here = move || nix::net::if_::if_nametoindex(name.as_str()).is_ok();
    match &p.path {
        None => super::netns::run_in(paths, &p.namespace, here).unwrap_or(false),
        Some(path) => super::netns::run_in_path(path, &p.namespace, here).unwrap_or(false),
    }
}

fn create_tun_here(p: &TunPlan) -> Result<OwnedFd, LinkError> {
    let ns = p.namespace.clone();
    let mut cfg = tun::Configuration::default();
    // Every frame carries a virtio-net header, and checksums are offloaded
    // both ways (dataplane/vnet.rs).
    cfg.tun_name(&p.ifname).platform_config(|c| {
        c.ensure_root_privileges(false);
        c.vnet_hdr(true);
    });
    let dev = tun::create(&cfg).map_err(|e| LinkError::CreateTun {
        ns: ns.clone(),
        name: p.ifname.clone(),
        reason: e.to_string(),
    })?;
    dev.set_nonblock().map_err(|e| LinkError::CreateTun {
        ns: ns.clone(),
        name: p.ifname.clone(),
        reason: e.to_string(),
    })?;
    let fd = super::sys::tun_into_owned(dev);
    super::sys::tun_offload_checksums(std::os::fd::AsFd::as_fd(&fd)).map_err(|e| LinkError::CreateTun {
        ns: ns.clone(),
        name: p.ifname.clone(),
        reason: format!("checksum offload: {e}"),
    })?;
    // IPv6 blocked: no address, no route, and no link-local either. (In a
    // container's namespace /proc/sys is the namespace's own.)
    let v6_off = if p.ipv6 { "0" } else { "1" };
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", p.ifname), v6_off);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| LinkError::Netlink {
        ns: ns.clone(),
        op: "runtime",
        reason: e.to_string(),
    })?;
    rt.block_on(configure(p))?;
    Ok(fd)
}

async fn configure(p: &TunPlan) -> Result<(), LinkError> {
    let ns = p.namespace.as_str();
    let nl =
        |op: &'static str| move |e: rtnetlink::Error| LinkError::Netlink { ns: ns.into(), op, reason: e.to_string() };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| LinkError::Netlink {
        ns: ns.into(),
        op: "open socket",
        reason: e.to_string(),
    })?;
    let task = tokio::spawn(conn);
    let res = async {
        let lo = index_of(&handle, "lo").await.map_err(nl("find lo"))?;
        handle.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(nl("set lo up"))?;
        let tun = index_of(&handle, &p.ifname).await.map_err(nl("find the TUN"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(tun).mtu(p.mtu).txqueuelen(p.txqueuelen).up().build())
            .execute()
            .await
            .map_err(nl("set the TUN up"))?;
        handle
            .address()
            .add(tun, IpAddr::V4(p.address), 32)
            .replace()
            .execute()
            .await
            .map_err(nl("add the TUN's address"))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(tun).build();
        handle.route().add(route).replace().execute().await.map_err(nl("add default route"))?;
        if p.ipv6 {
            let mut req = handle.address().add(tun, IpAddr::V6(plan::TUN_V6), 128).replace();
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            req.execute().await.map_err(nl("add the TUN's IPv6 address"))?;
            let route = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(tun).build();
            handle.route().add(route).replace().execute().await.map_err(nl("add IPv6 default route"))?;
        }
        Ok(())
    }
    .await;
    task.abort();
    res
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await? {
        Some(msg) => Ok(msg.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

/// `tun_present` for many namespaces, entered in turn by one thread.
pub fn tuns_present(paths: &Paths, namespaces: &[String]) -> Vec<bool> {
    super::netns::run_in_each(paths, namespaces, || nix::net::if_::if_nametoindex(plan::TUN_NAME).is_ok())
        .into_iter()
        .map(|p| p.unwrap_or(false))
        .collect()
}

/// Whether `tun0` exists in the namespace (for `status`).
pub fn tun_present(paths: &Paths, namespace: &str) -> bool {
    super::netns::run_in(paths, namespace, || nix::net::if_::if_nametoindex(plan::TUN_NAME).is_ok()).unwrap_or(false)
}
