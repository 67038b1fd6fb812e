"""SquishedNets: very small SqueezeNet-family networks by deep evolutionary synthesis."""
__version__ = "0.1.0"
