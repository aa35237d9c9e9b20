# make bench-cluster: cluster mode's figures (issue 13) — fan-out to N members
# alone, on one node and split over two, pushes/s within a node and across
# nodes, NATS messages per push (tests/bench/cluster.sh, about a minute).
# Included by the Makefile.
.PHONY: bench-cluster
bench-cluster: linkd
	@tests/bench/cluster.sh
