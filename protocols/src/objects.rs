//! The object map of one Wayland connection: which id is which interface at which version.
//!
//! It follows libwayland's rules, so that a relay sitting between a client and a server agrees
//! with both about every id:
//! - ids `1..0xff000000` are allocated by the client, `0xff000000..` by the server;
//! - a new id must be a free slot or the next one past the last used (libwayland's
//!   `wl_map_insert_at`), which also bounds the map by what a peer actually created;
//! - a client-allocated id stays reserved after its object is destroyed (by a destructor
//!   request, or a destructor event such as `wl_callback.done`) until the server's
//!   `wl_display.delete_id`; events still arriving for it are framed with its interface and
//!   then dropped;
//! - a server-allocated id is free again as soon as its object is destroyed.
//!
//! [`ObjectMap::process_request`] and [`ObjectMap::process_event`] do the whole per-message
//! work for a relay: find the sender, pick the signature, decode, check object arguments, create
//! and destroy objects.

use crate::tables::{
    Direction, Interface, MessageDesc, ProtocolTable, TableError, message_desc, same_interface,
};
use crate::wire::{Arg, Args, Message, ObjectId, WireError};
use wayland_backend::protocol::ANONYMOUS_INTERFACE;

/// First id of the server's range.
pub const SERVER_ID_START: u32 = 0xff00_0000;

/// Default limit on live objects per connection (libwayland has none; a relay needs one).
pub const DEFAULT_MAX_OBJECTS: usize = 65_536;

/// Ids each side may use per object allowed live. libwayland reuses freed ids (lowest first on
/// the server, its free list on the client), so a well-behaved peer's highest id stays near its
/// peak of live objects plus those awaiting `delete_id`; a peer that never reuses ids would
/// otherwise grow the map without bound. With this cap a map holds at most
/// `2 × (ID_SPACE_PER_OBJECT × max_objects + 2)` slots of [`ObjectMap::SLOT_BYTES`] each.
pub const ID_SPACE_PER_OBJECT: usize = 4;

/// `wl_display.delete_id` event opcode.
const DISPLAY_DELETE_ID: u16 = 1;

/// Which peer allocated an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Ids below [`SERVER_ID_START`].
    Client,
    /// Ids from [`SERVER_ID_START`] on.
    Server,
}

impl Side {
    /// The side whose range `id` is in.
    pub fn of(id: ObjectId) -> Side {
        if id.get() >= SERVER_ID_START {
            Side::Server
        } else {
            Side::Client
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// What the map knows of a live object.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    /// Its interface.
    pub interface: &'static Interface,
    /// The version it was created or bound with.
    pub version: u32,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Free,
    Alive(Object),
    /// Destroyed, id not yet released by `delete_id`.
    Zombie(Object),
}

/// Why a message does not fit the connection's objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// No object has this id.
    #[error("object {0} does not exist")]
    UnknownObject(ObjectId),
    /// A request was sent to an object that was already destroyed.
    #[error("object {0} was destroyed")]
    DestroyedObject(ObjectId),
    /// A new id is still in use.
    #[error("new id {0} is already in use")]
    IdInUse(ObjectId),
    /// A new id is in the other peer's range.
    #[error("new id {id} is not in the {}'s id range", expected.as_str())]
    WrongSide {
        /// The id.
        id: ObjectId,
        /// The side that was creating it.
        expected: Side,
    },
    /// A new id skips ahead of the next free one.
    #[error("new id {id} skips ahead; the next new id is {next}")]
    IdNotNext {
        /// The id.
        id: ObjectId,
        /// The highest id that would have been accepted.
        next: u32,
    },
    /// The connection has as many objects as it may have.
    #[error("connection reached its limit of {0} objects")]
    TooManyObjects(usize),
    /// A new id past the id space the connection may use (it does not reuse freed ids).
    #[error("new id {id} is past the {max} ids of this connection; freed ids must be reused")]
    IdSpaceExhausted {
        /// The id.
        id: ObjectId,
        /// Ids the side may use.
        max: usize,
    },
    /// `wl_display.delete_id` for an id that is not waiting for it.
    #[error("delete_id for object {0}, which is not awaiting deletion")]
    UnexpectedDeleteId(u32),
    /// `wl_registry.bind` names an interface the tables do not describe.
    #[error("bind to unknown interface {0:?}")]
    UnknownInterface(String),
    /// A version of 0, or above what the tables describe.
    #[error("{interface} version {version} is not between 1 and {max}")]
    BadVersion {
        /// Interface name.
        interface: &'static str,
        /// Version asked for.
        version: u32,
        /// Highest version described.
        max: u32,
    },
    /// An object argument names an object of the wrong interface.
    #[error("argument {index} should be a {expected} but object {id} is a {found}")]
    WrongInterface {
        /// Position in the signature.
        index: usize,
        /// The object.
        id: ObjectId,
        /// What the signature says.
        expected: &'static str,
        /// What the object is.
        found: &'static str,
    },
    /// An object argument names an object that does not exist or was destroyed.
    #[error("argument {index} refers to object {id}, which does not exist")]
    InvalidArgumentObject {
        /// Position in the signature.
        index: usize,
        /// The object.
        id: ObjectId,
    },
    /// The message is not in the sender's interface.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The message bytes do not match the signature.
    #[error("{interface}.{message}: {source}")]
    Wire {
        /// Interface name.
        interface: &'static str,
        /// Message name.
        message: &'static str,
        /// What was wrong.
        #[source]
        source: WireError,
    },
}

/// A message matched to its object and decoded.
#[derive(Debug, Clone)]
pub struct Processed<'a> {
    /// The sender's (request) or emitter's (event) interface.
    pub interface: &'static Interface,
    /// Its version.
    pub version: u32,
    /// The message description.
    pub desc: &'static MessageDesc,
    /// The decoded arguments.
    pub args: Args<'a>,
    /// An object created by this message, with its interface.
    pub created: Option<(ObjectId, &'static Interface)>,
    /// Whether the sender was destroyed by this message.
    pub destroyed: bool,
    /// An event for an object the client already destroyed: framed, but not to be delivered.
    pub to_zombie: bool,
}

/// The objects of one connection.
#[derive(Debug, Clone)]
pub struct ObjectMap {
    client: Vec<Slot>,
    server: Vec<Slot>,
    live: usize,
    max_objects: usize,
}

impl Default for ObjectMap {
    fn default() -> Self {
        ObjectMap::new(DEFAULT_MAX_OBJECTS)
    }
}

impl ObjectMap {
    /// A map holding only `wl_display` (id 1), allowing at most `max_objects` live objects.
    pub fn new(max_objects: usize) -> ObjectMap {
        let display = ProtocolTable::builtin()
            .get("wl_display")
            .map(|interface| {
                Slot::Alive(Object {
                    interface,
                    version: 1,
                })
            })
            .unwrap_or(Slot::Free);
        // Index 0 stands for the null id and is never used.
        ObjectMap {
            client: vec![Slot::Free, display],
            server: vec![],
            live: 1,
            max_objects,
        }
    }

    /// Bytes one id of the map takes.
    pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

    /// Number of live objects.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Ids each side may use: [`ID_SPACE_PER_OBJECT`] per allowed live object, plus the null
    /// id and `wl_display`.
    pub fn max_ids(&self) -> usize {
        self.max_objects
            .saturating_mul(ID_SPACE_PER_OBJECT)
            .saturating_add(2)
    }

    /// Ids the map has room for now, both sides (its memory is this × [`Self::SLOT_BYTES`]).
    pub fn id_slots(&self) -> usize {
        self.client.len() + self.server.len()
    }

    fn slot(&self, id: ObjectId) -> Option<&Slot> {
        let (slots, index) = self.index(id);
        slots.get(index)
    }

    fn index(&self, id: ObjectId) -> (&Vec<Slot>, usize) {
        match Side::of(id) {
            Side::Client => (&self.client, id.get() as usize),
            Side::Server => (&self.server, (id.get() - SERVER_ID_START) as usize),
        }
    }

    fn slots_mut(&mut self, side: Side) -> &mut Vec<Slot> {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// The live object with this id.
    pub fn get(&self, id: ObjectId) -> Result<Object, ObjectError> {
        match self.slot(id) {
            Some(Slot::Alive(o)) => Ok(*o),
            Some(Slot::Zombie(_)) => Err(ObjectError::DestroyedObject(id)),
            _ => Err(ObjectError::UnknownObject(id)),
        }
    }

    /// Creates an object allocated by `side`.
    pub fn insert(
        &mut self,
        id: ObjectId,
        side: Side,
        interface: &'static Interface,
        version: u32,
    ) -> Result<(), ObjectError> {
        if Side::of(id) != side {
            return Err(ObjectError::WrongSide { id, expected: side });
        }
        if self.live >= self.max_objects {
            return Err(ObjectError::TooManyObjects(self.max_objects));
        }
        let index = match side {
            Side::Client => id.get() as usize,
            Side::Server => (id.get() - SERVER_ID_START) as usize,
        };
        let max_ids = self.max_ids();
        let slots = self.slots_mut(side);
        let object = Slot::Alive(Object { interface, version });
        let len = slots.len();
        match slots.get_mut(index) {
            Some(slot @ Slot::Free) => *slot = object,
            Some(_) => return Err(ObjectError::IdInUse(id)),
            None if index == len => {
                if len >= max_ids {
                    return Err(ObjectError::IdSpaceExhausted { id, max: max_ids });
                }
                slots.push(object)
            }
            None => {
                let base = if side == Side::Server {
                    SERVER_ID_START
                } else {
                    0
                };
                return Err(ObjectError::IdNotNext {
                    id,
                    next: base + len as u32,
                });
            }
        }
        self.live += 1;
        Ok(())
    }

    /// Destroys a live object: a client id waits for `delete_id`, a server id is freed.
    pub fn destroy(&mut self, id: ObjectId) -> Result<(), ObjectError> {
        let object = self.get(id)?;
        let side = Side::of(id);
        let (_, index) = self.index(id);
        self.slots_mut(side)[index] = match side {
            Side::Client => Slot::Zombie(object),
            Side::Server => Slot::Free,
        };
        self.live -= 1;
        Ok(())
    }

    /// Releases a destroyed client id (`wl_display.delete_id`).
    pub fn delete_id(&mut self, raw: u32) -> Result<(), ObjectError> {
        let id = ObjectId::new(raw).ok_or(ObjectError::UnexpectedDeleteId(raw))?;
        if Side::of(id) != Side::Client {
            return Err(ObjectError::UnexpectedDeleteId(raw));
        }
        match self.client.get_mut(id.get() as usize) {
            Some(slot @ Slot::Zombie(_)) => {
                *slot = Slot::Free;
                Ok(())
            }
            _ => Err(ObjectError::UnexpectedDeleteId(raw)),
        }
    }

    /// Handles a request from the client: the sender must be alive, object arguments must be
    /// alive and of the right interface, new ids must be the client's next.
    pub fn process_request<'a>(
        &mut self,
        table: &ProtocolTable,
        msg: &Message<'a>,
        fds_available: usize,
    ) -> Result<Processed<'a>, ObjectError> {
        let id = msg.header.object;
        let sender = self.get(id)?;
        let desc = message_desc(
            sender.interface,
            Direction::Request,
            msg.header.opcode,
            sender.version,
        )?;
        let args = self.decode(sender, desc, msg, fds_available)?;
        self.check_object_args(desc, &args, false)?;
        let created = self.create_child(table, sender, desc, &args, Side::Client)?;
        if desc.is_destructor {
            self.destroy(id)?;
        }
        Ok(Processed {
            interface: sender.interface,
            version: sender.version,
            desc,
            args,
            created,
            destroyed: desc.is_destructor,
            to_zombie: false,
        })
    }

    /// Handles an event from the server. Events for objects the client has destroyed are
    /// framed with the old interface and flagged [`Processed::to_zombie`]; `delete_id` releases
    /// the id.
    pub fn process_event<'a>(
        &mut self,
        table: &ProtocolTable,
        msg: &Message<'a>,
        fds_available: usize,
    ) -> Result<Processed<'a>, ObjectError> {
        let id = msg.header.object;
        let (sender, to_zombie) = match self.slot(id) {
            Some(Slot::Alive(o)) => (*o, false),
            Some(Slot::Zombie(o)) => (*o, true),
            _ => return Err(ObjectError::UnknownObject(id)),
        };
        let desc = message_desc(
            sender.interface,
            Direction::Event,
            msg.header.opcode,
            sender.version,
        )?;
        let args = self.decode(sender, desc, msg, fds_available)?;
        self.check_object_args(desc, &args, true)?;
        let created = self.create_child(table, sender, desc, &args, Side::Server)?;
        let destroyed = desc.is_destructor && !to_zombie;
        if destroyed {
            self.destroy(id)?;
        }
        if id == ObjectId::DISPLAY
            && msg.header.opcode == DISPLAY_DELETE_ID
            && let Some(Arg::Uint(deleted)) = args.as_slice().first()
        {
            self.delete_id(*deleted)?;
        }
        Ok(Processed {
            interface: sender.interface,
            version: sender.version,
            desc,
            args,
            created,
            destroyed,
            to_zombie,
        })
    }

    fn decode<'a>(
        &self,
        sender: Object,
        desc: &'static MessageDesc,
        msg: &Message<'a>,
        fds_available: usize,
    ) -> Result<Args<'a>, ObjectError> {
        msg.decode(desc.signature, fds_available)
            .map_err(|source| ObjectError::Wire {
                interface: sender.interface.name,
                message: desc.name,
                source,
            })
    }

    fn check_object_args(
        &self,
        desc: &MessageDesc,
        args: &Args<'_>,
        from_server: bool,
    ) -> Result<(), ObjectError> {
        let mut expected = desc.arg_interfaces.iter();
        for (index, arg) in args.as_slice().iter().enumerate() {
            let Arg::Object(maybe) = arg else { continue };
            let want = expected.next();
            let Some(id) = *maybe else { continue };
            let found = match self.slot(id) {
                Some(Slot::Alive(o)) => o,
                // The server may still name an object the client just destroyed; the client
                // library reads it as null.
                Some(Slot::Zombie(o)) if from_server => o,
                _ => return Err(ObjectError::InvalidArgumentObject { index, id }),
            };
            if let Some(want) = want {
                let anonymous = want.name == ANONYMOUS_INTERFACE.name;
                if !anonymous && !same_interface(want, found.interface) {
                    return Err(ObjectError::WrongInterface {
                        index,
                        id,
                        expected: want.name,
                        found: found.interface.name,
                    });
                }
            }
        }
        Ok(())
    }

    fn create_child(
        &mut self,
        table: &ProtocolTable,
        sender: Object,
        desc: &MessageDesc,
        args: &Args<'_>,
        side: Side,
    ) -> Result<Option<(ObjectId, &'static Interface)>, ObjectError> {
        let slice = args.as_slice();
        let Some((pos, id)) = slice.iter().enumerate().find_map(|(i, a)| match a {
            Arg::NewId(id) => Some((i, *id)),
            _ => None,
        }) else {
            return Ok(None);
        };
        let (interface, version) = match desc.child_interface {
            Some(child) => (child, sender.version),
            // The untyped new_id of wl_registry.bind: interface name and version precede it.
            None => match (
                pos.checked_sub(2).and_then(|p| slice.get(p)),
                pos.checked_sub(1).and_then(|p| slice.get(p)),
            ) {
                (Some(Arg::Str(Some(name))), Some(Arg::Uint(version))) => {
                    let name = name.to_string_lossy();
                    let interface = table
                        .get(&name)
                        .ok_or_else(|| ObjectError::UnknownInterface(name.into_owned()))?;
                    if *version == 0 || *version > interface.version {
                        return Err(ObjectError::BadVersion {
                            interface: interface.name,
                            version: *version,
                            max: interface.version,
                        });
                    }
                    (interface, *version)
                }
                _ => return Err(ObjectError::UnknownInterface(String::new())),
            },
        };
        self.insert(id, side, interface, version)?;
        Ok(Some((id, interface)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_unchecked;

    fn id(n: u32) -> ObjectId {
        ObjectId::new(n).unwrap()
    }

    fn msg(object: u32, opcode: u16, args: &[Arg<'_>]) -> Vec<u8> {
        let mut out = vec![];
        encode_unchecked(&mut out, id(object), opcode, args).unwrap();
        out
    }

    fn request(map: &mut ObjectMap, bytes: &[u8]) -> Result<Processed<'static>, ObjectError> {
        let bytes: &'static [u8] = Vec::leak(bytes.to_vec());
        map.process_request(ProtocolTable::builtin(), &Message::parse(bytes).unwrap(), 0)
    }

    fn event(map: &mut ObjectMap, bytes: &[u8]) -> Result<Processed<'static>, ObjectError> {
        let bytes: &'static [u8] = Vec::leak(bytes.to_vec());
        map.process_event(ProtocolTable::builtin(), &Message::parse(bytes).unwrap(), 0)
    }

    /// get_registry(2), bind(name 1, wl_compositor v4) as 3, create_surface as 4.
    fn with_surface() -> ObjectMap {
        let mut map = ObjectMap::default();
        request(&mut map, &msg(1, 1, &[Arg::NewId(id(2))])).unwrap();
        let name = c"wl_compositor";
        let bind = [
            Arg::Uint(1),
            Arg::Str(Some(name)),
            Arg::Uint(4),
            Arg::NewId(id(3)),
        ];
        let p = request(&mut map, &msg(2, 0, &bind)).unwrap();
        assert_eq!(
            p.created.map(|(i, f)| (i, f.name)),
            Some((id(3), "wl_compositor"))
        );
        request(&mut map, &msg(3, 0, &[Arg::NewId(id(4))])).unwrap();
        map
    }

    #[test]
    fn bind_sets_interface_and_version_of_new_object() {
        let map = with_surface();
        assert_eq!(map.get(id(3)).unwrap().version, 4);
        let surface = map.get(id(4)).unwrap();
        assert_eq!((surface.interface.name, surface.version), ("wl_surface", 4));
    }

    #[test]
    fn request_to_unknown_object_is_rejected() {
        let mut map = with_surface();
        assert_eq!(
            request(&mut map, &msg(9, 0, &[])).unwrap_err(),
            ObjectError::UnknownObject(id(9))
        );
    }

    #[test]
    fn new_id_reused_while_alive_is_rejected() {
        let mut map = with_surface();
        let err = request(&mut map, &msg(3, 0, &[Arg::NewId(id(4))])).unwrap_err();
        assert_eq!(err, ObjectError::IdInUse(id(4)));
    }

    #[test]
    fn new_id_skipping_ahead_is_rejected() {
        let mut map = with_surface();
        let err = request(&mut map, &msg(3, 0, &[Arg::NewId(id(40))])).unwrap_err();
        assert_eq!(
            err,
            ObjectError::IdNotNext {
                id: id(40),
                next: 5
            }
        );
    }

    #[test]
    fn new_id_in_server_range_from_client_is_rejected() {
        let mut map = with_surface();
        let err = request(&mut map, &msg(3, 0, &[Arg::NewId(id(SERVER_ID_START))])).unwrap_err();
        assert_eq!(
            err,
            ObjectError::WrongSide {
                id: id(SERVER_ID_START),
                expected: Side::Client
            }
        );
    }

    #[test]
    fn destroyed_id_is_reserved_until_delete_id() {
        let mut map = with_surface();
        // wl_surface.destroy
        request(&mut map, &msg(4, 0, &[])).unwrap();
        assert_eq!(
            map.get(id(4)).unwrap_err(),
            ObjectError::DestroyedObject(id(4))
        );
        let err = request(&mut map, &msg(3, 0, &[Arg::NewId(id(4))])).unwrap_err();
        assert_eq!(err, ObjectError::IdInUse(id(4)));
        event(&mut map, &msg(1, 1, &[Arg::Uint(4)])).unwrap();
        request(&mut map, &msg(3, 0, &[Arg::NewId(id(4))])).unwrap();
    }

    #[test]
    fn event_for_zombie_is_flagged_not_rejected() {
        let mut map = with_surface();
        // wl_compositor has no events; use a callback: wl_surface.frame(5), destroy surface.
        request(&mut map, &msg(4, 3, &[Arg::NewId(id(5))])).unwrap();
        // wl_callback.done is a destructor event.
        let p = event(&mut map, &msg(5, 0, &[Arg::Uint(16)])).unwrap();
        assert!(p.destroyed && !p.to_zombie);
        // A second done to the now-zombie callback is framed but flagged.
        let p = event(&mut map, &msg(5, 0, &[Arg::Uint(17)])).unwrap();
        assert!(p.to_zombie && !p.destroyed);
        event(&mut map, &msg(1, 1, &[Arg::Uint(5)])).unwrap();
        assert_eq!(
            map.get(id(5)).unwrap_err(),
            ObjectError::UnknownObject(id(5))
        );
    }

    #[test]
    fn delete_id_of_live_object_is_rejected() {
        let mut map = with_surface();
        assert_eq!(
            event(&mut map, &msg(1, 1, &[Arg::Uint(4)])).unwrap_err(),
            ObjectError::UnexpectedDeleteId(4)
        );
    }

    #[test]
    fn object_argument_of_wrong_interface_is_rejected() {
        let mut map = with_surface();
        // wl_surface.attach(buffer = the compositor)
        let err = request(
            &mut map,
            &msg(4, 1, &[Arg::Object(Some(id(3))), Arg::Int(0), Arg::Int(0)]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ObjectError::WrongInterface {
                index: 0,
                id: id(3),
                expected: "wl_buffer",
                found: "wl_compositor"
            }
        );
    }

    #[test]
    fn request_above_object_version_is_rejected() {
        let mut map = with_surface();
        // wl_surface.offset is since 5; the surface is version 4.
        let err = request(&mut map, &msg(4, 10, &[Arg::Int(0), Arg::Int(0)])).unwrap_err();
        assert!(matches!(
            err,
            ObjectError::Table(TableError::VersionTooLow { since: 5, .. })
        ));
    }

    #[test]
    fn bind_unknown_interface_is_rejected() {
        let mut map = with_surface();
        let name = c"evil_v1";
        let bind = [
            Arg::Uint(9),
            Arg::Str(Some(name)),
            Arg::Uint(1),
            Arg::NewId(id(5)),
        ];
        assert_eq!(
            request(&mut map, &msg(2, 0, &bind)).unwrap_err(),
            ObjectError::UnknownInterface("evil_v1".into())
        );
    }

    #[test]
    fn bind_version_above_table_is_rejected() {
        let mut map = with_surface();
        let name = c"wl_shm";
        let bind = [
            Arg::Uint(9),
            Arg::Str(Some(name)),
            Arg::Uint(999),
            Arg::NewId(id(5)),
        ];
        assert!(matches!(
            request(&mut map, &msg(2, 0, &bind)).unwrap_err(),
            ObjectError::BadVersion { version: 999, .. }
        ));
    }

    #[test]
    fn server_created_object_is_freed_on_destroy() {
        let mut map = ObjectMap::default();
        let iface = ProtocolTable::builtin().get("wl_data_offer").unwrap();
        map.insert(id(SERVER_ID_START), Side::Server, iface, 3)
            .unwrap();
        map.destroy(id(SERVER_ID_START)).unwrap();
        map.insert(id(SERVER_ID_START), Side::Server, iface, 3)
            .unwrap();
    }

    #[test]
    fn limit_on_live_objects_is_enforced() {
        let mut map = ObjectMap::new(3);
        request(&mut map, &msg(1, 1, &[Arg::NewId(id(2))])).unwrap();
        request(&mut map, &msg(1, 0, &[Arg::NewId(id(3))])).unwrap();
        let err = request(&mut map, &msg(1, 0, &[Arg::NewId(id(4))])).unwrap_err();
        assert_eq!(err, ObjectError::TooManyObjects(3));
    }

    #[test]
    fn ids_never_reused_stop_at_the_id_space_cap() {
        // One live object allowed besides wl_display: ids up to 4 × 2 + 2 = 10.
        let mut map = ObjectMap::new(2);
        let max = map.max_ids();
        assert_eq!(max, 10);
        let mut next = 2;
        let err = loop {
            match request(&mut map, &msg(1, 0, &[Arg::NewId(id(next))])) {
                Ok(_) => {}
                Err(e) => break e,
            }
            // wl_display.sync's callback: destroyed by the server's done, freed by delete_id.
            map.destroy(id(next)).unwrap();
            map.delete_id(next).unwrap();
            next += 1;
        };
        assert_eq!(
            err,
            ObjectError::IdSpaceExhausted {
                id: id(max as u32),
                max
            }
        );
        assert!(map.id_slots() <= max, "{}", map.id_slots());
        // A freed id is still welcome.
        request(&mut map, &msg(1, 0, &[Arg::NewId(id(2))])).unwrap();
    }

    // The README's limits table counts 24 bytes per id.
    const _: () = assert!(ObjectMap::SLOT_BYTES <= 24);
}
