"""rtdp.hardware: the ZeroMQ wire (protocol, env server, RemoteEnv, pub/sub); numpy, pyzmq and msgpack only."""

from rtdp.hardware.client import EpisodeLost, RemoteEnv, RemoteEnvError, ServerGone
from rtdp.hardware.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from rtdp.hardware.pubsub import CommandReceiver, CommandSender, StatePublisher, StateSubscriber
from rtdp.hardware.server import EnvServer

__all__ = ["PROTOCOL_VERSION", "CommandReceiver", "CommandSender", "EnvServer", "EpisodeLost", "Message",
           "ProtocolError", "RemoteEnv", "RemoteEnvError", "ServerGone", "StatePublisher", "StateSubscriber",
           "decode", "encode"]
