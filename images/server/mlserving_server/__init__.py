"""The ml-serving inference server: MQTT in, LiteRT forecasts out (docs/server.md, docs/protocol.md)."""
