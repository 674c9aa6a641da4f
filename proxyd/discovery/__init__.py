"""Service discovery: a pool's servers found at run time in DNS SRV records or etcd keys.

Sans-IO cores (proxyd.discovery.srv, proxyd.discovery.etcd: records or events in, a server
list out) under thin Twisted drivers (srv_driver, etcd_driver), run by the DiscoveryService
(proxyd.discovery.service), which hands each list to its pool (Pool.set_discovered)."""
