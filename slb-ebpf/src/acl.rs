//! Source filtering: ACL policy groups (B7.1–B7.4) and the legacy white list (B7.8, B7.11).
use aya_ebpf::maps::lpm_trie::Key;
use slb_common::*;

use crate::{
    maps::{ACL_V4, ACL_V6},
    parse::Pkt,
};

#[inline(always)]
fn matches(acl_id: u32, pkt: &Pkt) -> bool {
    let acl = acl_id.to_be_bytes();
    if pkt.family == FAMILY_V4 {
        let key = Key::new(
            64,
            AclV4 {
                acl,
                addr: pkt.src[0].to_ne_bytes(),
            },
        );
        ACL_V4.get(&key).is_some()
    } else {
        let s = pkt.src;
        let (a, b, c, d) = (
            s[0].to_ne_bytes(),
            s[1].to_ne_bytes(),
            s[2].to_ne_bytes(),
            s[3].to_ne_bytes(),
        );
        let key = Key::new(
            160,
            AclV6 {
                acl,
                addr: [
                    a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0],
                    d[1], d[2], d[3],
                ],
            },
        );
        ACL_V6.get(&key).is_some()
    }
}

/// Whether the listener's filters let this source through. The agent sets the ACL flags only
/// for non-empty ACLs, so an empty ACL forwards everything (B7.4).
#[inline(always)]
pub fn allowed(meta: &ListenerMeta, pkt: &Pkt) -> bool {
    if meta.flags & LF_LEGACY_WHITE != 0 && !matches(meta.legacy_acl_id, pkt) {
        return false;
    }
    if meta.flags & LF_ACL_WHITE != 0 {
        return matches(meta.acl_id, pkt);
    }
    if meta.flags & LF_ACL_BLACK != 0 {
        return !matches(meta.acl_id, pkt);
    }
    true
}
