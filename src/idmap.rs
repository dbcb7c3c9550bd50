//! Id mapping and squashing: fuse-overlayfs's `uidmapping=`, `gidmapping=`,
//! `squash_to_root`, `squash_to_uid=` and `squash_to_gid=`.
//!
//! Layers keep ids in their own numbering (an image's: 0 is the image's
//! root); the mount may show them in another (the host's, or the numbering a
//! user namespace expects). With `uidmapping=0:100000:65536` a file stored
//! as uid 0 is shown as uid 100000, and a chown to 100005 through the mount
//! stores uid 5. An id outside every range, either way, becomes the
//! overflow id (65534), as the kernel does for ids a user namespace cannot
//! map.
//!
//! Squashing only changes what stat shows: a chown still stores the id it
//! is given (mapped, if a mapping is set), as fuse-overlayfs does.

use crate::options::IdMapping;

/// The id the kernel shows for an id that has no mapping.
const DEFAULT_OVERFLOW_ID: u32 = 65534;

/// The ranges of one kind of id (users or groups). Empty: ids are shown as
/// stored.
#[derive(Debug, Clone, Default)]
struct Ranges {
    ranges: Vec<IdMapping>,
    overflow: u32,
}

impl Ranges {
    fn shown(&self, stored: u32) -> u32 {
        if self.ranges.is_empty() {
            return stored;
        }
        self.ranges
            .iter()
            .find(|m| stored >= m.container && stored - m.container < m.count)
            .map_or(self.overflow, |m| m.host + (stored - m.container))
    }

    fn stored(&self, shown: u32) -> u32 {
        if self.ranges.is_empty() {
            return shown;
        }
        self.ranges
            .iter()
            .find(|m| shown >= m.host && shown - m.host < m.count)
            .map_or(self.overflow, |m| m.container + (shown - m.host))
    }
}

/// How ids on the layers relate to the ids the mount shows.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    uids: Ranges,
    gids: Ranges,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

impl IdMap {
    /// `squash_to_root` squashes both ids to 0 unless `squash_uid` or
    /// `squash_gid` name another (they take precedence, as in fuse-overlayfs).
    pub fn new(
        uid_mappings: &[IdMapping],
        gid_mappings: &[IdMapping],
        squash_to_root: bool,
        squash_uid: Option<u32>,
        squash_gid: Option<u32>,
    ) -> IdMap {
        let root = squash_to_root.then_some(0);
        IdMap {
            uids: Ranges {
                ranges: uid_mappings.to_vec(),
                overflow: overflow_id("overflowuid"),
            },
            gids: Ranges {
                ranges: gid_mappings.to_vec(),
                overflow: overflow_id("overflowgid"),
            },
            squash_uid: squash_uid.or(root),
            squash_gid: squash_gid.or(root),
        }
    }

    /// Whether ids reaching the layers (chown, new files) are translated.
    pub fn translates_stored_ids(&self) -> bool {
        !self.uids.ranges.is_empty() || !self.gids.ranges.is_empty()
    }

    /// The owner stat shows for an object stored as `uid:gid`.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.squash_uid.unwrap_or_else(|| self.uids.shown(uid)),
            self.squash_gid.unwrap_or_else(|| self.gids.shown(gid)),
        )
    }

    /// The user id stored for `uid` as given through the mount.
    pub fn stored_uid(&self, uid: u32) -> u32 {
        self.uids.stored(uid)
    }

    /// The group id stored for `gid` as given through the mount.
    pub fn stored_gid(&self, gid: u32) -> u32 {
        self.gids.stored(gid)
    }
}

/// The kernel's overflow id (what a user namespace shows for an unmapped
/// id), 65534 unless the administrator changed it.
fn overflow_id(which: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/{which}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_OVERFLOW_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(container: u32, host: u32, count: u32) -> IdMapping {
        IdMapping {
            container,
            host,
            count,
        }
    }

    #[test]
    fn no_options_is_the_identity() {
        let map = IdMap::new(&[], &[], false, None, None);
        assert_eq!(map.shown(5, 7), (5, 7));
        assert_eq!((map.stored_uid(5), map.stored_gid(7)), (5, 7));
        assert!(!map.translates_stored_ids());
    }

    #[test]
    fn ranges_map_both_ways_and_overflow_outside() {
        // A user namespace's whole map on one line: 0→1000, 1..65537→110000..
        let ranges = [range(0, 1000, 1), range(1, 110000, 65536)];
        let map = IdMap::new(&ranges, &ranges, false, None, None);
        assert_eq!(map.shown(0, 0), (1000, 1000));
        assert_eq!(map.shown(1, 2), (110000, 110001));
        assert_eq!(map.shown(65536, 65536), (175535, 175535));
        assert_eq!(map.shown(65537, 70000), (65534, 65534));
        assert_eq!(map.stored_uid(1000), 0);
        assert_eq!(map.stored_uid(110005), 6);
        assert_eq!(map.stored_uid(5), 65534);
        assert_eq!(map.stored_gid(u32::MAX), 65534);
        assert!(map.translates_stored_ids());
    }

    #[test]
    fn a_range_reaching_the_top_of_the_id_space() {
        let ranges = [range(u32::MAX - 1, 0, 2)];
        let map = IdMap::new(&ranges, &[], false, None, None);
        assert_eq!(map.shown(u32::MAX, 3), (1, 3));
        assert_eq!(map.stored_uid(1), u32::MAX);
        assert_eq!(map.shown(0, 3).0, 65534);
    }

    #[test]
    fn squash_shows_one_owner_and_keeps_what_chown_stores() {
        let map = IdMap::new(&[], &[], true, None, None);
        assert_eq!(map.shown(5, 7), (0, 0));
        assert_eq!((map.stored_uid(3), map.stored_gid(4)), (3, 4));
        let map = IdMap::new(&[], &[], true, Some(7), None);
        assert_eq!(map.shown(5, 7), (7, 0));
        let map = IdMap::new(&[], &[], false, None, Some(9));
        assert_eq!(map.shown(5, 7), (5, 9));
    }
}
