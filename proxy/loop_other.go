//go:build !linux

package proxy

import (
	"bufio"
	"time"
)

// Outside Linux there is no event loop: every session is served by its own
// goroutine on net.Conn (the portable driver), idle clients keep their
// goroutine, and relay_loop and io_uring have no effect. What follows is the
// loop as the portable code sees it, taking no session.

type parker struct {
	now  int64         // unused: no session is ever in the loop
	mono time.Duration // likewise
}

func newParker(*Server) *parker { return &parker{} }

func (p *parker) park(*session) bool        { return false }
func (p *parker) post(loopMsg)              {}
func (p *parker) count() int                { return 0 }
func (p *parker) forgetServer(uint64)       {}
func (p *parker) getWriter() *bufio.Writer  { return writerPool.Get().(*bufio.Writer) }
func (p *parker) putWriter(w *bufio.Writer) { writerPool.Put(w) }

type loopMsg struct {
	ss   *session
	wake bool
}

type loopState struct{ ejected bool }
