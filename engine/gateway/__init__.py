"""The HTTP order gateway: order entry (embedded engine or Kafka), order book
and trade reads, WebSocket market data. See ``engine/gateway/app.py``."""

from .app import GatewayServer, check_bind, create_app, serve
from .entry import EmbeddedEntry, EntryAnswer, EntryUnavailable, KafkaEntry, OrderEntry, OrderIds
from .market_data import MarketDataHub

__all__ = ["create_app", "serve", "check_bind", "GatewayServer", "OrderEntry", "EmbeddedEntry", "KafkaEntry",
           "EntryAnswer", "EntryUnavailable", "OrderIds", "MarketDataHub"]
