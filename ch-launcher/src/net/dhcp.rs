//! The DHCPv4 server of one interface: it answers only the VM's MAC, on the
//! in-pod bridge, with one fixed lease (KubeVirt's: infinite). Packets are
//! encoded and decoded by `dhcproto`.

use super::Resolv;
use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use domain_model::{Binding, Interface};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Everything one guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Ipv4Addr,
    pub mtu: u32,
    pub hostname: String,
    pub resolv: Resolv,
    pub extras: domain_model::DhcpExtras,
}

impl Lease {
    /// An error only for a MAC that resolution would not have let through.
    pub fn for_interface(
        nic: &Interface,
        hostname: &str,
        mtu: u32,
        resolv: &Resolv,
    ) -> Result<Lease, String> {
        let Binding::Masquerade {
            gateway,
            guest,
            prefix,
            ..
        } = &nic.binding;
        Ok(Lease {
            mac: domain_model::resolve::parse_mac(&nic.mac)?,
            address: *guest,
            prefix: *prefix,
            router: *gateway,
            mtu,
            hostname: hostname.to_string(),
            resolv: resolv.clone(),
            extras: nic.dhcp.clone(),
        })
    }

    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }

    /// The answer to `request`, or `None` when it is not for this lease.
    pub fn answer(&self, request: &Message) -> Option<Message> {
        if request.opcode() != Opcode::BootRequest
            || request.chaddr().get(..6) != Some(&self.mac[..])
        {
            return None;
        }
        let kind = match request.opts().get(OptionCode::MessageType) {
            Some(DhcpOption::MessageType(t)) => *t,
            _ => return None,
        };
        let reply_type = match kind {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request => {
                let asked = match request.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(a)) => *a,
                    _ => request.ciaddr(),
                };
                if asked == self.address {
                    MessageType::Ack
                } else {
                    MessageType::Nak
                }
            }
            MessageType::Inform => MessageType::Ack,
            _ => return None,
        };
        let mut reply = Message::default();
        reply
            .set_opcode(Opcode::BootReply)
            .set_xid(request.xid())
            .set_flags(request.flags())
            .set_giaddr(request.giaddr())
            .set_chaddr(request.chaddr());
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(reply_type));
        opts.insert(DhcpOption::ServerIdentifier(self.router));
        if reply_type == MessageType::Nak {
            return Some(reply);
        }
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(u32::MAX));
        opts.insert(DhcpOption::SubnetMask(self.mask()));
        opts.insert(DhcpOption::Router(vec![self.router]));
        opts.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(
            u32::from(self.address) | !u32::from(self.mask()),
        )));
        if !self.resolv.nameservers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(
                self.resolv.nameservers.clone(),
            ));
        }
        if let Some(first) = self.resolv.search.first() {
            opts.insert(DhcpOption::DomainName(first.clone()));
            let names: Vec<dhcproto::Name> = self
                .resolv
                .search
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            if !names.is_empty() {
                opts.insert(DhcpOption::DomainSearch(names));
            }
        }
        if let Ok(mtu) = u16::try_from(self.mtu) {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        opts.insert(DhcpOption::Hostname(self.hostname.clone()));
        if let Ok(default) = ipnet::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0) {
            opts.insert(DhcpOption::ClasslessStaticRoute(vec![(
                default,
                self.router,
            )]));
        }
        if !self.extras.ntp_servers.is_empty() {
            opts.insert(DhcpOption::NtpServers(self.extras.ntp_servers.clone()));
        }
        if let Some(f) = &self.extras.boot_file_name {
            opts.insert(DhcpOption::BootfileName(f.as_bytes().to_vec()));
        }
        if let Some(t) = &self.extras.tftp_server_name {
            opts.insert(DhcpOption::TFTPServerName(t.as_bytes().to_vec()));
        }
        for (code, value) in &self.extras.private_options {
            opts.insert(DhcpOption::Unknown(v4::UnknownOption::new(
                OptionCode::from(*code),
                value.as_bytes().to_vec(),
            )));
        }
        reply.set_yiaddr(self.address).set_siaddr(self.router);
        Some(reply)
    }
}

/// A DHCP server bound to port 67 on one bridge.
pub struct Server {
    socket: tokio::net::UdpSocket,
    lease: Lease,
}

impl Server {
    pub fn bind(device: &str, lease: Lease) -> std::io::Result<Server> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_broadcast(true)?;
        socket.bind_device(Some(device.as_bytes()))?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67).into())?;
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        Ok(Server { socket, lease })
    }

    /// Answers until aborted.
    pub async fn run(self) {
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "DHCP receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(request) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                tracing::debug!(%from, "not a DHCP message");
                continue;
            };
            let Some(reply) = self.lease.answer(&request) else {
                continue;
            };
            let mut out = Vec::new();
            if reply.encode(&mut Encoder::new(&mut out)).is_err() {
                continue;
            }
            // The client has no address yet: broadcast on the bridge.
            let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);
            match self.socket.send_to(&out, to).await {
                Ok(_) => tracing::info!(mac = ?self.lease.mac, address = %self.lease.address,
                    reply = ?reply.opts().get(OptionCode::MessageType), "DHCP answered"),
                Err(e) => tracing::warn!(error = %e, "DHCP send failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            mac: [2, 0, 0, 0, 0, 1],
            address: Ipv4Addr::new(10, 0, 2, 2),
            prefix: 24,
            router: Ipv4Addr::new(10, 0, 2, 1),
            mtu: 1400,
            hostname: "vm".into(),
            resolv: Resolv::parse("nameserver 10.96.0.10\nnameserver fd00::1\nsearch ns.svc.cluster.local svc.cluster.local\n"),
            extras: domain_model::DhcpExtras {
                ntp_servers: vec![Ipv4Addr::new(10, 0, 0, 123)],
                private_options: vec![(240, "extra".into())],
                ..Default::default()
            },
        }
    }

    fn request(kind: MessageType, mac: [u8; 6]) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(7)
            .set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    #[test]
    fn discover_gets_an_offer_with_every_option() {
        let l = lease();
        let offer = l.answer(&request(MessageType::Discover, l.mac)).unwrap();
        // Through the wire format and back, as the client reads it.
        let mut bytes = Vec::new();
        offer.encode(&mut Encoder::new(&mut bytes)).unwrap();
        let offer = Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(offer.xid(), 7);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
        let o = offer.opts();
        assert_eq!(
            o.get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Offer))
        );
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 96, 0, 10
            )]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1400))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm".into()))
        );
        assert!(
            matches!(o.get(OptionCode::DomainSearch), Some(DhcpOption::DomainSearch(n)) if n.len() == 2)
        );
        assert!(o.get(OptionCode::ClasslessStaticRoute).is_some());
        assert!(o.get(OptionCode::NtpServers).is_some());
        assert!(o.get(OptionCode::from(240)).is_some());
    }

    #[test]
    fn request_for_the_lease_is_acked_another_address_naked_other_macs_ignored() {
        let l = lease();
        let mut req = request(MessageType::Request, l.mac);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(l.address));
        let ack = l.answer(&req).unwrap();
        assert_eq!(
            ack.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Ack))
        );
        let mut req = request(MessageType::Request, l.mac);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 9)));
        let nak = l.answer(&req).unwrap();
        assert_eq!(
            nak.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Nak))
        );
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(l
            .answer(&request(MessageType::Discover, [2, 0, 0, 0, 0, 9]))
            .is_none());
    }
}
