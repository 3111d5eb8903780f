"""Fleet: EST enrollment, an internal CA and an mTLS MQTT broker for IoT devices."""

__version__ = "0.1.0"
