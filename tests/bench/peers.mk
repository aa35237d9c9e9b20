# make bench-peers: linkd against Socket.IO, Pushpin, a Node ws peer and a
# bare libuv+wslay server, one load tool, one run (tests/bench/peers.sh,
# about 5 minutes). Included by the Makefile.
.PHONY: bench-peers
bench-peers: linkd
	@tests/bench/peers.sh
