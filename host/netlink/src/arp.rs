//! Gratuitous ARP: telling a link's neighbours that an address is now
//! reached at a MAC. Shared-NIC mode needs it when a pod's address comes
//! to rest behind another node's NIC (a sticky identity that moved, or an
//! address of a block another node held before): the vxnet's gateway and
//! every peer that talked to the address keep its old MAC in their
//! neighbour tables until the entry ages out, and send there meanwhile.
//! Linux updates an existing entry from a gratuitous request at once,
//! whatever its state, without creating entries that were not there.

use std::net::Ipv4Addr;

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike, sendto, socket,
};

use crate::{Error, Mac};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The frame: an ARP request from `ip` at `mac` for `ip` itself, to
/// everyone on the link.
fn frame(mac: Mac, ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    // The target MAC stays zero; the target address is the sender's.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// A socket that sends gratuitous ARPs on the links of the namespace it
/// was opened in. Opened once and kept: closing a packet socket waits for
/// an RCU grace period (`synchronize_net`, ~10 ms here), which a socket per
/// announcement added to every shared ADD (the shared-mode benchmark
/// found it).
#[derive(Debug)]
pub struct Announcer {
    fd: std::os::fd::OwnedFd,
}

impl Announcer {
    /// A socket in the calling thread's namespace. Protocol 0: it only
    /// sends, and sees none of the frames the kernel receives.
    pub fn open() -> Result<Announcer, Error> {
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| Error::io("opening a packet socket for gratuitous ARP")(e.into()))?;
        Ok(Announcer { fd })
    }

    /// Announces on link `ifindex` that `ip` is at `mac`: one broadcast
    /// frame.
    pub fn announce(&self, ifindex: u32, mac: Mac, ip: Ipv4Addr) -> Result<(), Error> {
        let op = || format!("announcing {ip} at {mac} on link {ifindex}");
        let mut ll = sockaddr_ll(ifindex);
        ll.sll_addr[..6].copy_from_slice(&BROADCAST);
        let len = std::mem::size_of_val(&ll) as nix::libc::socklen_t;
        // SAFETY: `ll` is a fully initialised sockaddr_ll that lives for the
        // call, and `len` is its size.
        let to = unsafe { LinkAddr::from_raw(std::ptr::from_ref(&ll).cast(), Some(len)) }
            .ok_or_else(|| Error::io(op())(std::io::Error::other("sockaddr_ll refused")))?;
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &frame(mac, ip),
            &to,
            MsgFlags::empty(),
        )
        .map_err(|e| Error::io(op())(e.into()))?;
        Ok(())
    }
}

fn sockaddr_ll(ifindex: u32) -> nix::libc::sockaddr_ll {
    nix::libc::sockaddr_ll {
        sll_family: nix::libc::AF_PACKET as u16,
        sll_protocol: ETH_P_ARP.to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_request_for_the_senders_own_address() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let f = frame(mac, Ipv4Addr::new(10, 100, 0, 7));
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[28..32], &[10, 100, 0, 7]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 100, 0, 7]);
    }
}
