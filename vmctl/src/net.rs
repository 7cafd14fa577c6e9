//! Network identity of a VM, derived from its MAC address.
//!
//! All VMs boot the same disk image, so the only thing that tells them apart
//! is the MAC given on the QEMU command line; the guest derives its whole
//! network setup from it. vmctl uses this rule (the tiny test guest and any
//! real guest image follow it):
//!
//! * MAC `52:54:AA:BB:CC:DD` → IPv4 `AA.BB.CC.DD` (each byte in decimal),
//!   netmask `/24`, gateway `AA.BB.CC.1` (the physical node routes for its
//!   VMs, as in the article).
//!
//! Each node owns one *block*, a `/24` of VMs. Block `b` (0 ≤ b < 14336) and
//! VM index `i` (0 ≤ i < 253) map to
//!
//! * IP `10.(200 + b / 256).(b % 256).(i + 2)`,
//! * MAC `52:54:0a:(200 + b / 256):(b % 256):(i + 2)` (hex).
//!
//! So the host part runs from `.2` to `.254`: it is never `.0` (network),
//! `.1` (the node's gateway) or `.255` (broadcast).
//!
//! ```
//! use vmctl::net::VmAddress;
//!
//! let a = VmAddress::new(1, 3).unwrap();
//! assert_eq!(a.mac().to_string(), "52:54:0a:c8:01:05");
//! assert_eq!(a.ip().to_string(), "10.200.1.5");
//! assert_eq!(a.gateway().to_string(), "10.200.1.1");
//! assert_eq!(VmAddress::from_mac(&a.mac()).unwrap(), a);
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The first two bytes of every vmctl MAC: QEMU/KVM's locally administered
/// unicast prefix.
pub const MAC_PREFIX: [u8; 2] = [0x52, 0x54];
/// First IPv4 octet of VM addresses.
pub const IP_FIRST_OCTET: u8 = 10;
/// Second octet of block 0; blocks move it up to 255.
pub const IP_SECOND_OCTET_BASE: u8 = 200;
/// Number of node blocks: 56 values of the second octet × 256 of the third.
pub const MAX_BLOCKS: u32 = (256 - IP_SECOND_OCTET_BASE as u32) * 256;
/// Host part of VM index 0 (`.0` is the network, `.1` the gateway).
pub const FIRST_HOST: u8 = 2;
/// Number of VMs per block: host parts `.2` ..= `.254`.
pub const MAX_VMS_PER_BLOCK: u32 = 254 - FIRST_HOST as u32 + 1;

/// Errors of the address mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The node block id is out of range.
    #[error("node block {0} is out of range (0..{MAX_BLOCKS})")]
    BlockOutOfRange(u32),
    /// The VM index is out of range.
    #[error("VM index {0} is out of range (0..{MAX_VMS_PER_BLOCK})")]
    IndexOutOfRange(u32),
    /// A MAC string is not six `:`-separated hex bytes.
    #[error("malformed MAC address {0:?}")]
    MalformedMac(String),
    /// The MAC is not of the `52:54:…` form vmctl hands out.
    #[error("MAC {0} does not start with 52:54")]
    ForeignMac(Mac),
    /// The address is not inside vmctl's VM ranges.
    #[error("{0} is not a vmctl VM address (10.200-255.x.2-254)")]
    NotAVmAddress(Ipv4Addr),
}

/// A 48-bit Ethernet MAC address, shown as `52:54:0a:c8:01:05`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::MalformedMac(s.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(bytes))
    }
}

impl Mac {
    /// The IPv4 address the guest derives from this MAC:
    /// `52:54:AA:BB:CC:DD` → `AA.BB.CC.DD`.
    pub fn derived_ip(&self) -> Result<Ipv4Addr, NetError> {
        if self.0[..2] != MAC_PREFIX {
            return Err(NetError::ForeignMac(*self));
        }
        Ok(Ipv4Addr::new(self.0[2], self.0[3], self.0[4], self.0[5]))
    }

    /// The MAC whose derived IP is `ip` (the inverse of [`Mac::derived_ip`]).
    pub fn for_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Mac([MAC_PREFIX[0], MAC_PREFIX[1], o[0], o[1], o[2], o[3]])
    }
}

/// A VM's place in the cluster: the node's block and the VM's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmAddress {
    block: u32,
    index: u32,
}

impl VmAddress {
    /// VM `index` of node block `block`; both are range-checked.
    pub fn new(block: u32, index: u32) -> Result<Self, NetError> {
        if block >= MAX_BLOCKS {
            return Err(NetError::BlockOutOfRange(block));
        }
        if index >= MAX_VMS_PER_BLOCK {
            return Err(NetError::IndexOutOfRange(index));
        }
        Ok(Self { block, index })
    }

    /// The node block id.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// The VM index within the block.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The VM's IPv4 address (see the module docs for the rule).
    pub fn ip(&self) -> Ipv4Addr {
        // Range-checked in `new`: every value below fits in a byte.
        let hi = (u32::from(IP_SECOND_OCTET_BASE) + self.block / 256) as u8;
        let lo = (self.block % 256) as u8;
        let host = (u32::from(FIRST_HOST) + self.index) as u8;
        Ipv4Addr::new(IP_FIRST_OCTET, hi, lo, host)
    }

    /// The VM's MAC address, from which the guest derives [`VmAddress::ip`].
    pub fn mac(&self) -> Mac {
        Mac::for_ip(self.ip())
    }

    /// The gateway of the VM's block: the node itself, `.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.ip().octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// Recovers block and index from a VM IP address.
    pub fn from_ip(ip: Ipv4Addr) -> Result<Self, NetError> {
        let [a, b, c, d] = ip.octets();
        if a != IP_FIRST_OCTET || b < IP_SECOND_OCTET_BASE || !(FIRST_HOST..=254).contains(&d) {
            return Err(NetError::NotAVmAddress(ip));
        }
        let block = u32::from(b - IP_SECOND_OCTET_BASE) * 256 + u32::from(c);
        Self::new(block, u32::from(d - FIRST_HOST))
    }

    /// Recovers block and index from a VM MAC address.
    pub fn from_mac(mac: &Mac) -> Result<Self, NetError> {
        Self::from_ip(mac.derived_ip()?)
    }
}

impl fmt::Display for VmAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} vm {} ({}, {})",
            self.block,
            self.index,
            self.mac(),
            self.ip()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_addresses() {
        let first = VmAddress::new(0, 0).unwrap();
        assert_eq!(first.ip(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(first.mac().to_string(), "52:54:0a:c8:00:02");
        let last = VmAddress::new(MAX_BLOCKS - 1, MAX_VMS_PER_BLOCK - 1).unwrap();
        assert_eq!(last.ip(), Ipv4Addr::new(10, 255, 255, 254));
        assert_eq!(last.mac().to_string(), "52:54:0a:ff:ff:fe");
        assert_eq!(last.gateway(), Ipv4Addr::new(10, 255, 255, 1));
    }

    #[test]
    fn block_spills_into_the_second_octet() {
        let a = VmAddress::new(256 + 7, 10).unwrap();
        assert_eq!(a.ip(), Ipv4Addr::new(10, 201, 7, 12));
    }

    #[test]
    fn host_part_is_never_network_gateway_or_broadcast() {
        for index in 0..MAX_VMS_PER_BLOCK {
            let host = VmAddress::new(5, index).unwrap().ip().octets()[3];
            assert!(!matches!(host, 0 | 1 | 255), "index {index} -> .{host}");
        }
    }

    #[test]
    fn round_trips_both_ways() {
        for block in [0, 1, 255, 256, 9_999, MAX_BLOCKS - 1] {
            for index in [0, 1, 100, MAX_VMS_PER_BLOCK - 1] {
                let a = VmAddress::new(block, index).unwrap();
                assert_eq!(VmAddress::from_mac(&a.mac()).unwrap(), a);
                assert_eq!(VmAddress::from_ip(a.ip()).unwrap(), a);
                assert_eq!(a.mac().derived_ip().unwrap(), a.ip());
                let parsed: Mac = a.mac().to_string().parse().unwrap();
                assert_eq!(parsed, a.mac());
            }
        }
    }

    #[test]
    fn out_of_range_inputs_are_errors() {
        assert_eq!(
            VmAddress::new(MAX_BLOCKS, 0),
            Err(NetError::BlockOutOfRange(MAX_BLOCKS))
        );
        assert_eq!(
            VmAddress::new(0, MAX_VMS_PER_BLOCK),
            Err(NetError::IndexOutOfRange(MAX_VMS_PER_BLOCK))
        );
        for ip in [
            "10.200.0.1",
            "10.200.0.0",
            "10.200.0.255",
            "10.199.0.5",
            "192.168.1.5",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(VmAddress::from_ip(ip), Err(NetError::NotAVmAddress(ip)));
        }
        let foreign: Mac = "02:00:0a:c8:00:05".parse().unwrap();
        assert_eq!(
            VmAddress::from_mac(&foreign),
            Err(NetError::ForeignMac(foreign))
        );
    }

    #[test]
    fn malformed_macs_are_rejected() {
        for s in [
            "",
            "52:54:0a:c8:00",
            "52:54:0a:c8:00:05:01",
            "52:54:0a:c8:0:05",
            "zz:54:0a:c8:00:05",
        ] {
            assert!(
                matches!(s.parse::<Mac>(), Err(NetError::MalformedMac(_))),
                "{s:?}"
            );
        }
        assert_eq!(
            "52:54:0A:C8:00:05".parse::<Mac>().unwrap().to_string(),
            "52:54:0a:c8:00:05"
        );
    }

    #[test]
    fn derived_ip_follows_the_guest_rule() {
        // The env recipe's example: 52:54:0a:c8:01:05 -> 10.200.1.5
        let mac: Mac = "52:54:0a:c8:01:05".parse().unwrap();
        assert_eq!(mac.derived_ip().unwrap(), Ipv4Addr::new(10, 200, 1, 5));
    }
}
