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

use crate::opcodes::DISPLAY_DELETE_ID;
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

/// An id's state; a live object carries the relay's data for it, which dies with it.
#[derive(Debug, Clone)]
enum Slot<D> {
    Free,
    Alive(Object, D),
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
pub struct Processed<'a, D = ()> {
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
    /// The sender's data, when this message destroyed it (for the relay's clean-up).
    pub released: Option<D>,
}

/// The objects of one connection, each with data `D` of the relay's (like wayland-backend's
/// `Object<Data>`): it is created with the object (`D::default()`) and dropped when the object
/// is destroyed, so nothing a relay knows of an id can outlive its object and meet the next one.
/// Slots are vectors indexed by id (ids are dense), so lookups allocate nothing.
#[derive(Debug, Clone)]
pub struct ObjectMap<D = ()> {
    client: Vec<Slot<D>>,
    server: Vec<Slot<D>>,
    live: usize,
    max_objects: usize,
}

impl<D: Default> Default for ObjectMap<D> {
    fn default() -> Self {
        ObjectMap::new(DEFAULT_MAX_OBJECTS)
    }
}

impl<D: Default> ObjectMap<D> {
    /// A map holding only `wl_display` (id 1), allowing at most `max_objects` live objects.
    pub fn new(max_objects: usize) -> ObjectMap<D> {
        let display = ProtocolTable::builtin()
            .get("wl_display")
            .map(|interface| {
                Slot::Alive(
                    Object {
                        interface,
                        version: 1,
                    },
                    D::default(),
                )
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
    pub const SLOT_BYTES: usize = std::mem::size_of::<Slot<D>>();

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

    fn slot(&self, id: ObjectId) -> Option<&Slot<D>> {
        let (slots, index) = self.index(id);
        slots.get(index)
    }

    fn index(&self, id: ObjectId) -> (&Vec<Slot<D>>, usize) {
        match Side::of(id) {
            Side::Client => (&self.client, id.get() as usize),
            Side::Server => (&self.server, (id.get() - SERVER_ID_START) as usize),
        }
    }

    fn slot_mut(&mut self, id: ObjectId) -> Option<&mut Slot<D>> {
        match Side::of(id) {
            Side::Client => self.client.get_mut(id.get() as usize),
            Side::Server => self.server.get_mut((id.get() - SERVER_ID_START) as usize),
        }
    }

    /// The data of the live object `id`.
    pub fn data(&self, id: ObjectId) -> Option<&D> {
        match self.slot(id) {
            Some(Slot::Alive(_, data)) => Some(data),
            _ => None,
        }
    }

    /// The data of the live object `id`, to change.
    pub fn data_mut(&mut self, id: ObjectId) -> Option<&mut D> {
        match self.slot_mut(id) {
            Some(Slot::Alive(_, data)) => Some(data),
            _ => None,
        }
    }

    /// The live objects' ids and data.
    pub fn iter_data(&self) -> impl Iterator<Item = (ObjectId, &D)> {
        let client = self.client.iter().enumerate().map(|(i, s)| (i as u32, s));
        let server = (self.server.iter().enumerate())
            .map(|(i, s)| ((i as u32).wrapping_add(SERVER_ID_START), s));
        client.chain(server).filter_map(|(raw, slot)| match slot {
            Slot::Alive(_, data) => Some((ObjectId::new(raw)?, data)),
            _ => None,
        })
    }

    /// The live objects' ids and data, to change.
    pub fn iter_data_mut(&mut self) -> impl Iterator<Item = (ObjectId, &mut D)> {
        let client = (self.client.iter_mut().enumerate()).map(|(i, s)| (i as u32, s));
        let server = (self.server.iter_mut().enumerate())
            .map(|(i, s)| ((i as u32).wrapping_add(SERVER_ID_START), s));
        client.chain(server).filter_map(|(raw, slot)| match slot {
            Slot::Alive(_, data) => Some((ObjectId::new(raw)?, data)),
            _ => None,
        })
    }

    fn slots_mut(&mut self, side: Side) -> &mut Vec<Slot<D>> {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// The live object with this id.
    pub fn get(&self, id: ObjectId) -> Result<Object, ObjectError> {
        match self.slot(id) {
            Some(Slot::Alive(o, _)) => Ok(*o),
            Some(Slot::Zombie(_)) => Err(ObjectError::DestroyedObject(id)),
            _ => Err(ObjectError::UnknownObject(id)),
        }
    }

    /// The object `id` names, live or destroyed and awaiting `delete_id` (then `true`).
    pub fn lookup(&self, id: ObjectId) -> Option<(Object, bool)> {
        match self.slot(id) {
            Some(Slot::Alive(o, _)) => Some((*o, false)),
            Some(Slot::Zombie(o)) => Some((*o, true)),
            _ => None,
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
        let object = Slot::Alive(Object { interface, version }, D::default());
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

    /// Destroys a live object: a client id waits for `delete_id`, a server id is freed. Returns
    /// its data, which leaves the map either way.
    pub fn destroy(&mut self, id: ObjectId) -> Result<D, ObjectError> {
        let object = self.get(id)?;
        let side = Side::of(id);
        let (_, index) = self.index(id);
        let next = match side {
            Side::Client => Slot::Zombie(object),
            Side::Server => Slot::Free,
        };
        let old = std::mem::replace(&mut self.slots_mut(side)[index], next);
        self.live -= 1;
        match old {
            Slot::Alive(_, data) => Ok(data),
            // `get` found it alive.
            _ => Err(ObjectError::UnknownObject(id)),
        }
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
    ) -> Result<Processed<'a, D>, ObjectError> {
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
        let released = match desc.is_destructor {
            true => Some(self.destroy(id)?),
            false => None,
        };
        Ok(Processed {
            interface: sender.interface,
            version: sender.version,
            desc,
            args,
            created,
            destroyed: desc.is_destructor,
            to_zombie: false,
            released,
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
    ) -> Result<Processed<'a, D>, ObjectError> {
        self.process_event_mapped(table, msg, fds_available, |id, _| Some(id))
    }

    /// [`Self::process_event`] for a relay whose server connection has ids of its own
    /// ([`crate::translate`]): `msg`'s sender (and a `delete_id`'s argument) is already the
    /// client's id, and `map(id, new)` turns each object argument (`new`: each new id), a
    /// server-side id, into the client's (`None`: the client has no such object, or no id is
    /// left for it). The arguments returned are the client's.
    #[inline]
    pub fn process_event_mapped<'a>(
        &mut self,
        table: &ProtocolTable,
        msg: &Message<'a>,
        fds_available: usize,
        mut map: impl FnMut(ObjectId, bool) -> Option<ObjectId>,
    ) -> Result<Processed<'a, D>, ObjectError> {
        let id = msg.header.object;
        let (sender, to_zombie) = match self.slot(id) {
            Some(Slot::Alive(o, _)) => (*o, false),
            Some(Slot::Zombie(o)) => (*o, true),
            _ => return Err(ObjectError::UnknownObject(id)),
        };
        let desc = message_desc(
            sender.interface,
            Direction::Event,
            msg.header.opcode,
            sender.version,
        )?;
        let mut args = self.decode(sender, desc, msg, fds_available)?;
        for (index, arg) in args.as_mut_slice().iter_mut().enumerate() {
            match *arg {
                Arg::Object(Some(id)) => {
                    let mapped =
                        map(id, false).ok_or(ObjectError::InvalidArgumentObject { index, id })?;
                    *arg = Arg::Object(Some(mapped));
                }
                Arg::NewId(id) => {
                    let mapped =
                        map(id, true).ok_or(ObjectError::InvalidArgumentObject { index, id })?;
                    *arg = Arg::NewId(mapped);
                }
                _ => {}
            }
        }
        self.check_object_args(desc, &args, true)?;
        let created = self.create_child(table, sender, desc, &args, Side::Server)?;
        let destroyed = desc.is_destructor && !to_zombie;
        let released = match destroyed {
            true => Some(self.destroy(id)?),
            false => None,
        };
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
            released,
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
                Some(Slot::Alive(o, _)) => o,
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

    fn request<D: Default>(
        map: &mut ObjectMap<D>,
        bytes: &[u8],
    ) -> Result<Processed<'static, D>, ObjectError> {
        let bytes: &'static [u8] = Vec::leak(bytes.to_vec());
        map.process_request(ProtocolTable::builtin(), &Message::parse(bytes).unwrap(), 0)
    }

    fn event<D: Default>(
        map: &mut ObjectMap<D>,
        bytes: &[u8],
    ) -> Result<Processed<'static, D>, ObjectError> {
        let bytes: &'static [u8] = Vec::leak(bytes.to_vec());
        map.process_event(ProtocolTable::builtin(), &Message::parse(bytes).unwrap(), 0)
    }

    fn with_surface() -> ObjectMap {
        with_surface_in()
    }

    /// get_registry(2), bind(name 1, wl_compositor v4) as 3, create_surface as 4.
    fn with_surface_in<D: Default>() -> ObjectMap<D> {
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
        let mut map: ObjectMap = ObjectMap::default();
        let iface = ProtocolTable::builtin().get("wl_data_offer").unwrap();
        map.insert(id(SERVER_ID_START), Side::Server, iface, 3)
            .unwrap();
        map.destroy(id(SERVER_ID_START)).unwrap();
        map.insert(id(SERVER_ID_START), Side::Server, iface, 3)
            .unwrap();
    }

    #[test]
    fn data_lives_and_dies_with_its_object() {
        let mut map: ObjectMap<u32> = ObjectMap::default();
        request(&mut map, &msg(1, 1, &[Arg::NewId(id(2))])).unwrap();
        *map.data_mut(id(2)).unwrap() = 7;
        assert_eq!(map.data(id(2)), Some(&7));
        let iface = ProtocolTable::builtin().get("wl_data_offer").unwrap();
        let server = id(SERVER_ID_START);
        map.insert(server, Side::Server, iface, 3).unwrap();
        *map.data_mut(server).unwrap() = 9;
        assert_eq!(map.destroy(server), Ok(9));
        assert_eq!(map.data(server), None);
        // A new object on the same id starts from the default, not from what was there.
        map.insert(server, Side::Server, iface, 3).unwrap();
        assert_eq!(map.data(server), Some(&0));
        let ids: Vec<u32> = map.iter_data().map(|(i, _)| i.get()).collect();
        assert_eq!(ids, [1, 2, SERVER_ID_START]);
    }

    #[test]
    fn destructor_request_hands_back_the_data() {
        let mut map: ObjectMap<u32> = with_surface_in();
        *map.data_mut(id(4)).unwrap() = 5;
        // wl_surface.destroy
        let p = request(&mut map, &msg(4, 0, &[])).unwrap();
        assert_eq!(p.released, Some(5));
        assert_eq!(map.data(id(4)), None);
    }

    #[test]
    fn limit_on_live_objects_is_enforced() {
        let mut map: ObjectMap = ObjectMap::new(3);
        request(&mut map, &msg(1, 1, &[Arg::NewId(id(2))])).unwrap();
        request(&mut map, &msg(1, 0, &[Arg::NewId(id(3))])).unwrap();
        let err = request(&mut map, &msg(1, 0, &[Arg::NewId(id(4))])).unwrap_err();
        assert_eq!(err, ObjectError::TooManyObjects(3));
    }

    #[test]
    fn ids_never_reused_stop_at_the_id_space_cap() {
        // One live object allowed besides wl_display: ids up to 4 × 2 + 2 = 10.
        let mut map: ObjectMap = ObjectMap::new(2);
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
    const _: () = assert!(ObjectMap::<()>::SLOT_BYTES <= 24);
}
