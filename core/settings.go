package core

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmux/pgmux/protocol"
)

// Wanted is the run-time settings a client asked for, by lower-cased name:
// at startup, and as it has changed them since (the server reports them with
// ParameterStatus). Whichever server the client gets is brought to them
// first (ServerSettings.SyncQuery). Its holder serializes the calls.
type Wanted struct {
	m       map[string]string
	startup map[string]string // m as the startup packet gave it, for DISCARD ALL
	gen     uint64            // bumped whenever m changes
	fp      uint64            // FP's value for m at fpGen
	fpGen   uint64
}

// NewWanted returns the settings of a client that asked for startup at
// login (the map is kept).
func NewWanted(startup map[string]string) Wanted {
	w := Wanted{m: startup}
	if len(startup) > 0 {
		w.startup = maps.Clone(startup)
	}
	if w.m == nil {
		w.m = map[string]string{}
	}
	return w
}

// Get returns the value the client wants for key, if any.
func (w *Wanted) Get(key string) (string, bool) {
	v, ok := w.m[key]
	return v, ok
}

// Reported takes a ParameterStatus the client's server sent it (key
// lower-cased): a setting the client asked for, or one of those that follow a
// client when it changes them (Tracked), is now wanted with that value.
func (w *Wanted) Reported(key, value string) {
	if _, ok := w.m[key]; ok || Tracked(key) {
		w.m[key] = value
		w.gen++
	}
}

// Discard puts the settings back as the client logged in (DISCARD ALL).
func (w *Wanted) Discard() {
	w.m = maps.Clone(w.startup)
	if w.m == nil {
		w.m = map[string]string{}
	}
	w.gen++
}

// fpSeed seeds settings fingerprints.
var fpSeed = maphash.MakeSeed()

// FP returns a fingerprint of the settings (never 0), recomputed only when
// they change. Two clients asking for the same settings have the same
// fingerprint, so that a server matched to one needs no look for the other.
func (w *Wanted) FP() uint64 {
	if w.fp != 0 && w.fpGen == w.gen {
		return w.fp // inlined: asked at every grant
	}
	return w.newFP()
}

// newFP computes FP after the settings changed.
func (w *Wanted) newFP() uint64 {
	var fp uint64
	var h maphash.Hash
	h.SetSeed(fpSeed)
	for k, v := range w.m {
		h.Reset()
		h.WriteString(k)
		h.WriteByte(0)
		h.WriteString(v)
		fp += h.Sum64() // a sum: the order of the map does not matter
	}
	w.fp, w.fpGen = fp|1, w.gen
	return w.fp
}

// Tracked reports whether a reported setting (by lower-cased name) follows a
// client from server to server when it changes it, as in PgBouncer.
func Tracked(key string) bool {
	switch key {
	case "application_name", "client_encoding", "datestyle", "timezone",
		"intervalstyle", "standard_conforming_strings", "search_path":
		return true
	}
	return false
}

// ServerSettings is a server's run-time settings as it reported them and as
// pgmux set them. Its holder (the session holding the server) serializes the
// calls.
type ServerSettings struct {
	cur, base map[string]string   // by lower-cased name; base: as at connect
	names     map[string]string   // lower-cased name -> the server's spelling
	differs   map[string]struct{} // keys of cur that differ from base (or are not in it)
	// synced is the fingerprint (Wanted.FP) of the settings the server was
	// last brought to, 0 once they may have changed.
	synced uint64
}

// NewServerSettings returns the settings of a server that reported these at
// connect.
func NewServerSettings(reported map[string]string) ServerSettings {
	s := ServerSettings{cur: make(map[string]string, len(reported)), base: make(map[string]string, len(reported)),
		names: make(map[string]string, len(reported))}
	for k, v := range reported {
		lk := strings.ToLower(k)
		s.cur[lk], s.base[lk], s.names[lk] = v, v, k
	}
	return s
}

// Param is a setting a server reports at its start.
type Param struct {
	Name  string // as the server spells it
	Key   string // lower-cased, as Wanted's
	Value string
}

// Params returns the settings the server reported at connect, sorted by
// name: what a client is shown at login, with its own settings over them.
func (s *ServerSettings) Params() []Param {
	params := make([]Param, 0, len(s.base))
	for lk, v := range s.base {
		params = append(params, Param{Name: s.names[lk], Key: lk, Value: v})
	}
	slices.SortFunc(params, func(a, b Param) int { return strings.Compare(a.Name, b.Name) })
	return params
}

// Note takes a ParameterStatus the server sent, and returns its lower-cased
// name.
func (s *ServerSettings) Note(name, value string) string {
	lk := strings.ToLower(name)
	s.setCur(lk, value)
	if _, ok := s.names[lk]; !ok {
		s.names[lk] = name
	}
	return lk
}

// InSync reports whether the server was last brought to w's settings and
// has not changed since: it needs no query before w's client uses it.
func (s *ServerSettings) InSync(w *Wanted) bool { return s.synced == w.FP() }

// Synced records that the server's settings are now w's.
func (s *ServerSettings) Synced(w *Wanted) { s.synced = w.FP() }

// setCur records a setting's current value, keeping differs up to date.
func (s *ServerSettings) setCur(k, v string) {
	s.synced = 0
	s.cur[k] = v
	if base, ok := s.base[k]; ok && base == v {
		delete(s.differs, k)
	} else {
		if s.differs == nil {
			s.differs = map[string]struct{}{}
		}
		s.differs[k] = struct{}{}
	}
}

// resetCur records that a setting is back to the server's start.
func (s *ServerSettings) resetCur(k string) {
	s.synced = 0
	if base, ok := s.base[k]; ok {
		s.cur[k] = base
	} else {
		delete(s.cur, k)
	}
	delete(s.differs, k)
}

// SyncQuery appends to msg the Query message that brings the server's
// settings to w's (nothing when they match): the settings w wants that
// differ are set, those it does not want that differ from the server's start
// are reset. It appends to touched the keys it sets or resets, and records
// the values as set (SyncFailed undoes that when the query fails).
func (s *ServerSettings) SyncQuery(w *Wanted, msg []byte, touched []string) ([]byte, []string) {
	start, set := len(msg), len(touched)
	msg = append(msg, 'Q', 0, 0, 0, 0)
	body := len(msg)
	// set_config takes a value as the startup packet gives it; SET would
	// quote a list such as search_path 'a, b' into one name.
	for k, v := range w.m {
		if cur, ok := s.cur[k]; !ok || cur != v {
			if len(touched) == set {
				msg = append(msg, "SELECT "...)
			} else {
				msg = append(msg, ", "...)
			}
			msg = append(msg, "pg_catalog.set_config("...)
			msg = appendLiteral(msg, k)
			msg = append(msg, ", "...)
			msg = appendLiteral(msg, v)
			msg = append(msg, ", false)"...)
			touched = append(touched, k)
		}
	}
	if len(touched) > set {
		msg = append(msg, ';')
	}
	wanted := len(touched)
	for k := range s.differs {
		if _, ok := w.m[k]; !ok {
			msg = append(msg, "RESET "...)
			msg = appendIdent(msg, k)
			msg = append(msg, ';')
			touched = append(touched, k)
		}
	}
	if len(msg) == body {
		return msg[:start], touched
	}
	msg = append(msg, 0)
	binary.BigEndian.PutUint32(msg[start+1:], uint32(len(msg)-start-1))
	// Values set are not all reported back (search_path is not, before
	// PostgreSQL 18), so they are recorded now; reported ones are
	// overwritten as the answer comes.
	for _, k := range touched[set:wanted] {
		s.setCur(k, w.m[k])
	}
	for _, k := range touched[wanted:] {
		s.resetCur(k)
	}
	return msg, touched
}

// SettingsSync is one bringing of a server's settings to a client's
// before the client's request goes to it: the query (Start), the answer
// taken message by message (Note) and what becomes of the server at its
// end (End). Both drivers run it, the goroutine path blocking on the
// answer and the loop as its events come.
type SettingsSync struct {
	keys []string          // the settings the query touches
	err  *protocol.PgError // the error the server answered with, if any so far
}

// SyncEnd is what becomes of a server at the end of a settings sync.
type SyncEnd int8

const (
	SyncDone    SyncEnd = iota // its settings are the client's: the request goes to it
	SyncRefused                // it refused a setting and is idle: back to the pool, the client told (Refusal)
	SyncBroken                 // it failed, or its state is not known: closed, and another taken
)

// Start appends to msg the query that brings srv's settings to w's
// (ServerSettings.SyncQuery). With nothing to send srv is in sync already
// and the sync is over: SyncDone.
func (y *SettingsSync) Start(srv *Server, w *Wanted, msg []byte) []byte {
	msg, y.keys = srv.Settings.SyncQuery(w, msg, y.keys[:0])
	y.err = nil
	if len(msg) == 0 {
		srv.Settings.Synced(w)
	}
	return msg
}

// Note takes one message of the answer to Start's query, the server's own
// account of it first (Server.Note), and reports whether it was the
// answer's last (ReadyForQuery).
func (y *SettingsSync) Note(srv *Server, w *Wanted, typ byte, body []byte) (done bool, err error) {
	if done, err = srv.Note(typ, body); done || err != nil {
		return done, err
	}
	y.Take(w, typ, body)
	return false, nil
}

// Take takes a message of the answer other than its ReadyForQuery, which
// Server.Note has seen: the server's spelling of a value it reports, taken
// into w, or the error it sent.
func (y *SettingsSync) Take(w *Wanted, typ byte, body []byte) {
	switch typ {
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(body) == nil {
			lk := strings.ToLower(ps.Name)
			if _, ok := w.m[lk]; ok {
				w.m[lk] = ps.Value // the server's spelling of the value
			}
		}
	case 'E':
		y.err = protocol.DecodeError(body)
	}
}

// End says what becomes of srv once the answer has ended, or reading it
// failed with readErr, and records srv's settings accordingly.
func (y *SettingsSync) End(srv *Server, w *Wanted, readErr error) SyncEnd {
	idle := readErr == nil && srv.TxStatus == 'I'
	if idle && y.err == nil {
		srv.Settings.Synced(w)
		return SyncDone
	}
	srv.Settings.SyncFailed(y.keys)
	if idle {
		return SyncRefused
	}
	return SyncBroken
}

// Refusal is the client's error after SyncRefused: the server's own,
// ending the session, as a setting PostgreSQL refuses at login does.
func (y *SettingsSync) Refusal() *protocol.PgError {
	e := *y.err
	e.Severity = "FATAL"
	return &e
}

// SyncFailed records that the settings a failed SyncQuery query touched are
// as they were, which is no longer known: the query failed whole, but
// SyncQuery recorded them as set. Unknown, they are set or reset again by
// the next sync.
func (s *ServerSettings) SyncFailed(touched []string) {
	s.synced = 0
	for _, k := range touched {
		delete(s.cur, k)
		if s.differs == nil {
			s.differs = map[string]struct{}{}
		}
		s.differs[k] = struct{}{}
	}
}

// Reset records that the server's settings are back to its start, as after
// DISCARD ALL.
func (s *ServerSettings) Reset() {
	clear(s.cur)
	maps.Copy(s.cur, s.base)
	clear(s.differs)
	s.synced = 0
}

// appendIdent appends s quoted as an SQL identifier where it needs to be.
func appendIdent(b []byte, s string) []byte {
	plain := s != ""
	for i, r := range s {
		if !(r == '_' || r == '.' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			plain = false
		}
	}
	if plain {
		return append(b, s...)
	}
	return appendQuoted(b, s, '"')
}

// appendLiteral appends s as an SQL string literal.
func appendLiteral(b []byte, s string) []byte {
	if strings.IndexByte(s, '\\') >= 0 {
		b = append(b, 'E')
	}
	return appendQuoted(b, s, '\'')
}

// appendQuoted appends s between quote characters q, with q doubled and, in
// an E” literal, backslashes too.
func appendQuoted(b []byte, s string, q byte) []byte {
	esc := q == '\'' && strings.IndexByte(s, '\\') >= 0
	b = append(b, q)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == q || esc && c == '\\' {
			b = append(b, c)
		}
		b = append(b, c)
	}
	return append(b, q)
}
