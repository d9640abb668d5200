// Package testio holds readers the tests and benchmarks of several packages
// share.
package testio

// Cyclic is a reader that repeats B forever, to feed a benchmark the same
// messages without end.
type Cyclic struct {
	B   []byte
	off int
}

func (r *Cyclic) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.B[r.off:])
		n += c
		r.off = (r.off + c) % len(r.B)
	}
	return n, nil
}
