"""Fleet as the identity and policy plane of brokers built to cluster: configuration exports
and the contracts of their authentication hooks."""
