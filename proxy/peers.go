package proxy

import (
	"context"
	"encoding/binary"
	"sync"

	"go.uber.org/zap"
)

// Peering, PgBouncer's peer_id and [peers]: several pgmux behind one load
// balancer, where a client's CancelRequest may reach another instance than
// the one holding its session. Each instance puts its peer id in the
// BackendKeyData it hands out, where PgBouncer does (the second and third
// bytes of the eight-byte key, the process id's middle bytes, low byte
// first), and a cancel for another id is sent on to that peer. The key's
// last two bits count the hops left (TTL): an instance's own keys carry 3,
// each forward takes one, and a cancel with none left is dropped, so a
// misconfigured ring does not forward for ever.
//
// Peers may instead be found (Options.PeerAddrs: the addresses of a
// Kubernetes headless Service), with no ids: a cancel for no client of an
// instance's is then sent to every other, with no hops left, and the one
// holding the client acts on it.

// A Peer is another pgmux's client address.
type Peer struct {
	Host string // a host, or the directory of its Unix socket
	Port int
}

// MaxPeerID is the largest peer id the key has room for, as PgBouncer's.
const MaxPeerID = 16383

// cancelTTL is the key bits that count a cancel's hops left.
const cancelTTL = 3

// keyPeer is the peer id a BackendKeyData's process id carries.
func keyPeer(pid uint32) int { return int(pid>>16&0xff) | int(pid>>8&0xff)<<8 }

// withPeer puts peer into pid.
func withPeer(pid uint32, peer int) uint32 {
	return pid&0xff0000ff | uint32(peer&0xff)<<16 | uint32(peer>>8&0xff)<<8
}

// peerKey makes a key for this instance, peer id, from 8 random bytes: a
// process id below 2^31 (some clients read it as an int32) and at least
// 2^24, and a secret with every hop.
func peerKey(b [8]byte, peer int) (pid, secret uint32) {
	pid = withPeer(binary.BigEndian.Uint32(b[:4]), peer)
	pid = pid&0x00ffffff | uint32(1+b[0]%127)<<24
	return pid, binary.BigEndian.Uint32(b[4:]) | cancelTTL
}

// forwardCancel sends a CancelRequest meant for peer on to it, one hop
// fewer, if it has hops left and the peer is known.
func (s *Server) forwardCancel(peer int, pid uint32, key []byte) {
	if len(key) != 4 || key[3]&cancelTTL == 0 {
		s.log.Debug("cancel request dropped: no hops left", zap.Int("peer_id", peer))
		return
	}
	p, ok := s.options().Peers[peer]
	if !ok {
		s.log.Debug("cancel request for an unknown peer", zap.Int("peer_id", peer))
		return
	}
	network, addr := dialAddr(p.Host, p.Port)
	if err := sendCancelRequest(network, addr, pid, binary.BigEndian.AppendUint32(nil, binary.BigEndian.Uint32(key)-1), s.connectTimeout()); err != nil { // -1: the TTL bits, which are not 0
		s.log.Warn("forward cancel to peer", zap.Int("peer_id", peer), zap.Error(err))
	}
}

// broadcastCancel sends a CancelRequest for no client of this instance's
// to every peer PeerAddrs finds, with no hops left: the one holding the
// client cancels, and none sends it further.
func (s *Server) broadcastCancel(pid uint32, key []byte) {
	if key[3]&cancelTTL == 0 {
		return // sent on already
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.connectTimeout())
	defer cancel()
	addrs, err := s.options().PeerAddrs(ctx)
	if err != nil {
		s.log.Warn("find peers for a cancel request", zap.Error(err))
		return
	}
	secret := binary.BigEndian.Uint32(key) &^ cancelTTL
	var wg sync.WaitGroup
	for _, addr := range addrs {
		wg.Go(func() {
			if err := sendCancelRequest("tcp", addr, pid, binary.BigEndian.AppendUint32(nil, secret), s.connectTimeout()); err != nil {
				s.log.Debug("send cancel request to peer", zap.String("peer", addr), zap.Error(err))
			}
		})
	}
	wg.Wait()
}
