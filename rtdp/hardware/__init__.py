"""rtdp.hardware: the ZeroMQ wire (protocol, env server, RemoteEnv, pub/sub), the robot contract, the robot server
and RemoteRobot, safety, teleop devices; numpy, pyzmq and msgpack only."""

from rtdp.hardware.client import EpisodeLost, RemoteEnv, RemoteEnvError, ServerGone
from rtdp.hardware.protocol import PROTOCOL_VERSION, Message, ProtocolError, decode, encode
from rtdp.hardware.pubsub import CommandReceiver, CommandSender, StatePublisher, StateSubscriber
from rtdp.hardware.remote_robot import RemoteRobot, RobotServerError
from rtdp.hardware.robot import Robot, RobotError, RobotFeatures, RobotObservation
from rtdp.hardware.robot_server import RobotServer
from rtdp.hardware.server import EnvServer

__all__ = ["PROTOCOL_VERSION", "CommandReceiver", "CommandSender", "EnvServer", "EpisodeLost", "Message",
           "ProtocolError", "RemoteEnv", "RemoteEnvError", "RemoteRobot", "Robot", "RobotError", "RobotFeatures",
           "RobotObservation", "RobotServer", "RobotServerError", "ServerGone", "StatePublisher", "StateSubscriber",
           "decode", "encode"]
