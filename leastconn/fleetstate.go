package leastconn

// Run-time changes (an admin state or a weight set through the admin API)
// are kept in Caddy's storage, so that a restarted Caddy keeps them and
// every instance sharing the storage follows them. Each change is one key,
//
//	lbpool/state/<hash of the pool name>/<hash of the backend key>/<state|weight>
//
// holding the new value, the time it was made and the instance that made
// it. One key per backend and field means a write never reads first: two
// instances changing different backends, or different fields of one, never
// undo each other, and the newest change of a field wins everywhere.
//
// Each pool has one goroutine that writes its changes and reads the others'
// every state_sync. Requests never wait for it: the pick reads the atomic
// flags and weight it sets. The admin API waits for a write at most
// storageWait; past that the change holds here and the write is retried.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// DefaultStateSync is how often a pool reads the run-time changes other
// instances stored, when state_sync is not set.
const DefaultStateSync = 5 * time.Second

// MinStateSync is the shortest state_sync: each sync lists and reads the
// pool's keys, which a shorter one would make a steady load on the storage.
const MinStateSync = 100 * time.Millisecond

// StateSyncOff is the state_sync value that keeps run-time changes local.
const StateSyncOff = "off"

// Where a backend's run-time admin state or weight came from, as stats show it.
const (
	ChangeSourceLocal   = "local"   // the configuration, or this instance's admin API
	ChangeSourceStorage = "storage" // read from the storage: another instance, or this one before a restart
)

const (
	storageWait      = 1500 * time.Millisecond // the longest the admin API waits for the storage
	storageRound     = 10 * time.Second        // the bound of one write-and-read round's context
	maxStoredChange  = 4 << 10                 // a stored change is far smaller; larger is garbage
	fleetPrefix      = "lbpool/state"
	fieldState       = "state"
	fieldWeight      = "weight"
	storageNameLimit = 200 // the storage's description in /lbpool/fleet
)

// ErrBadWeight is the error of a run-time weight out of range.
var ErrBadWeight = fmt.Errorf("weight must be a whole number from 1 to %d, or null for the configured weight", MaxWeight)

// storedChange is the value of one key: one field of one backend.
type storedChange struct {
	Pool    string `json:"pool"`
	Backend string `json:"backend"` // as stats show it, credentials redacted
	// State is set in a state key; Weight in a weight key, where null (or
	// absent) returns the backend to its configured weight.
	State    string    `json:"state,omitempty"`
	Weight   *int      `json:"weight,omitempty"`
	At       time.Time `json:"at"`
	Instance string    `json:"instance"`
}

// parseStoredChange reads the value of a key of the given field. It
// rejects anything another version of lbpool would not have written:
// stored bytes are not trusted to be well formed.
func parseStoredChange(field string, data []byte) (storedChange, error) {
	var c storedChange
	if len(data) > maxStoredChange {
		return c, fmt.Errorf("%d bytes, over %d", len(data), maxStoredChange)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("bad JSON: %v", err)
	}
	if dec.More() {
		return c, errors.New("bad JSON: more than one value")
	}
	switch {
	case c.Pool == "" || c.Instance == "" || c.At.IsZero():
		return c, errors.New("pool, instance and at are required")
	case field == fieldState && (c.Weight != nil || (c.State != StateReady && c.State != StateDrain && c.State != StateMaint)):
		return c, fmt.Errorf("a state key holds state %q and a weight", c.State)
	case field == fieldWeight && (c.State != "" || (c.Weight != nil && (*c.Weight < 1 || *c.Weight > MaxWeight))):
		return c, ErrBadWeight
	case field != fieldState && field != fieldWeight:
		return c, fmt.Errorf("unknown field %q", field)
	}
	c.At = c.At.Round(0)
	return c, nil
}

// newer reports whether c comes after the change m holds: later, or as
// late and from an instance that sorts after (so every instance agrees).
func (c storedChange) newer(m changeMark) bool {
	return c.At.After(m.at) || (c.At.Equal(m.at) && c.Instance > m.instance)
}

// changeMark is the change a run-time field of a backend holds.
type changeMark struct {
	at          time.Time // zero: none, the configured value holds
	instance    string
	fromStorage bool
}

// backendRuntime is a backend's run-time state beside the atomics the pick
// reads; not on the hot path.
type backendRuntime struct {
	mu         sync.Mutex
	state      changeMark
	weight     changeMark
	configured int64 // the configured weight
	override   int64 // the run-time weight; 0: the configured one holds
}

// setConfiguredWeight records the configured weight; it is the weight in
// effect unless a run-time one is set.
func (b *Backend) setConfiguredWeight(w int) {
	b.rt.mu.Lock()
	b.rt.configured = int64(w)
	b.storeWeightLocked()
	b.rt.mu.Unlock()
}

func (b *Backend) storeWeightLocked() {
	w := b.rt.configured
	if b.rt.override > 0 {
		w = b.rt.override
	}
	b.weight.Store(w)
	b.scaled.Store(w * b.load.learned.Load())
}

// applyChange makes c this backend's field if it is newer than the held
// one, or always when forced (a change made here); it reports whether it did.
func (b *Backend) applyChange(field string, c storedChange, fromStorage, force bool) bool {
	b.rt.mu.Lock()
	defer b.rt.mu.Unlock()
	m := &b.rt.state
	if field == fieldWeight {
		m = &b.rt.weight
	}
	if !force && !c.newer(*m) {
		return false
	}
	*m = changeMark{at: c.At, instance: c.Instance, fromStorage: fromStorage}
	if field == fieldState {
		b.setAdminState(c.State)
		return true
	}
	b.rt.override = 0
	if c.Weight != nil {
		b.rt.override = int64(*c.Weight)
	}
	b.storeWeightLocked()
	return true
}

// runtimeStats fills the stats' run-time fields.
func (b *Backend) runtimeStats(s *BackendStats) {
	b.rt.mu.Lock()
	s.ConfiguredWeight = int(b.rt.configured)
	s.StateSource, s.StateChangedAt, s.StateChangedBy = b.rt.state.show()
	s.WeightSource, s.WeightChangedAt, s.WeightChangedBy = b.rt.weight.show()
	b.rt.mu.Unlock()
	if f := b.pool.fleet.Load(); f != nil {
		s.Unsaved = f.unsaved(b)
	}
}

func (m changeMark) show() (source string, at *time.Time, by string) {
	source = ChangeSourceLocal
	if m.fromStorage {
		source = ChangeSourceStorage
	}
	if !m.at.IsZero() {
		t := m.at.UTC()
		at = &t
	}
	return source, at, m.instance
}

// RuntimeChange is a change through the admin API: an admin state, a
// weight, or both.
type RuntimeChange struct {
	State string // "" leaves the admin state
	// SetWeight changes the weight to Weight, or back to the configured
	// weight when Weight is nil.
	SetWeight bool
	Weight    *int
}

// Change applies c to a backend at once and saves it to the storage (when
// the pool's state_sync is on), waiting for the storage at most a short
// time; it returns the backend's stats. The backend is matched by its URL
// as configured or as shown in stats.
func Change(pool, backend string, c RuntimeChange) (BackendStats, error) {
	switch {
	case c.State != "" && c.State != StateReady && c.State != StateDrain && c.State != StateMaint:
		return BackendStats{}, ErrBadState
	case c.SetWeight && c.Weight != nil && (*c.Weight < 1 || *c.Weight > MaxWeight):
		return BackendStats{}, ErrBadWeight
	case c.State == "" && !c.SetWeight:
		return BackendStats{}, errors.New("nothing to change: give a state, a weight or both")
	}
	pools := defaultRegistry.backendsByPool(pool)
	if len(pools) == 0 {
		return BackendStats{}, fmt.Errorf("%w: %q", ErrUnknownPool, pool)
	}
	p := pools[0]
	for i, b := range p.backends {
		if !b.matches(backend) {
			continue
		}
		f := b.pool.fleet.Load()
		made := storedChange{Pool: pool, Backend: b.URL(), At: time.Now().Round(0), Instance: instanceID()}
		if c.State != "" {
			sc := made
			sc.State = c.State
			b.applyChange(fieldState, sc, false, true)
			f.queue(b, fieldState, sc)
		}
		if c.SetWeight {
			wc := made
			wc.Weight = c.Weight
			b.applyChange(fieldWeight, wc, false, true)
			f.queue(b, fieldWeight, wc)
		}
		f.waitSaved(storageWait)
		return b.snapshot(pool, i < p.static, time.Now()), nil
	}
	return BackendStats{}, fmt.Errorf("%w: %q in pool %q", ErrUnknownBackend, redactRaw(backend), pool)
}

// fleetSync is a pool's goroutine that writes its run-time changes to the
// storage and reads the other instances'.
type fleetSync struct {
	reg   *registry
	pool  *Pool
	every atomic.Int64 // state_sync
	store atomic.Pointer[storageRef]
	log   atomic.Pointer[zap.Logger]

	kick chan chan error // a round now; its error on the channel
	stop chan struct{}
	done chan struct{}

	mu        sync.Mutex
	pending   map[string]storedChange // by key: changes not written yet
	lastSync  time.Time
	lastErr   string
	errSince  time.Time
	badLogged map[string]string // key → the garbage error last logged for it
}

type storageRef struct {
	s    certmagic.Storage
	name string
}

func newFleetSync(r *registry, p *Pool, s *poolSpec) *fleetSync {
	f := &fleetSync{
		reg:       r,
		pool:      p,
		kick:      make(chan chan error, 16),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		pending:   make(map[string]storedChange),
		badLogged: make(map[string]string),
	}
	f.update(s)
	return f
}

// update takes a new config's storage, interval and logger.
func (f *fleetSync) update(s *poolSpec) {
	f.every.Store(int64(s.stateSync))
	name := fmt.Sprint(s.storage)
	if len(name) > storageNameLimit {
		name = name[:storageNameLimit]
	}
	f.store.Store(&storageRef{s: s.storage, name: name})
	f.log.Store(s.logger)
}

// applyFleet starts, updates or stops the pool's fleet sync to follow s.
// Called with r.mu held; the returned func must be called after unlocking.
func (p *Pool) applyFleet(r *registry, s *poolSpec) (stopOld func()) {
	old := p.fleet.Load()
	switch {
	case s == nil || s.stateSync <= 0:
		if old != nil {
			p.fleet.Store(nil)
			return old.halt
		}
	case old != nil:
		old.update(s)
	default:
		f := newFleetSync(r, p, s)
		p.fleet.Store(f)
		go f.run()
	}
	return func() {}
}

// halt stops the goroutine and waits for it, at most one round's bound (a
// storage that ignores its context could hold it longer).
func (f *fleetSync) halt() {
	close(f.stop)
	select {
	case <-f.done:
	case <-time.After(storageRound):
		f.log.Load().Warn("fleet state: the storage still holds the sync of a removed pool", zap.String("pool", f.pool.name))
	}
}

func (f *fleetSync) run() {
	defer close(f.done)
	timer := time.NewTimer(jittered(time.Duration(f.every.Load())))
	defer timer.Stop()
	for {
		var waiters []chan error
		select {
		case <-f.stop:
			return
		case <-timer.C:
		case w := <-f.kick:
			waiters = append(waiters, w)
		}
	more:
		for {
			select {
			case w := <-f.kick:
				waiters = append(waiters, w)
			default:
				break more
			}
		}
		err := f.round()
		for _, w := range waiters {
			w <- err
		}
		timer.Reset(jittered(time.Duration(f.every.Load())))
	}
}

// jittered spreads syncs ±10% so instances started together drift apart.
func jittered(d time.Duration) time.Duration {
	return d - d/10 + rand.N(d/5+1)
}

// roundNow asks for a round and waits for it at most wait. A nil f (state
// sync off) has nothing to do.
func (f *fleetSync) roundNow(wait time.Duration) error {
	if f == nil {
		return nil
	}
	w := make(chan error, 1)
	select {
	case f.kick <- w:
	default:
		return errors.New("fleet state: a sync is already queued")
	}
	select {
	case err := <-w:
		return err
	case <-time.After(wait):
		return fmt.Errorf("fleet state: the storage did not answer within %v; the change holds here and is retried", wait)
	}
}

// waitSaved writes the queued changes, waiting at most wait; an error shows
// in the pool's fleet status and the backends' unsaved flag.
func (f *fleetSync) waitSaved(wait time.Duration) {
	if err := f.roundNow(wait); err != nil {
		f.note(err)
	}
}

// queue records a change made here for the next write; with state sync
// off (a nil f) it is not saved.
func (f *fleetSync) queue(b *Backend, field string, c storedChange) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.pending[changeKey(b.pool.name, b.addr.key, field)] = c
	f.mu.Unlock()
}

// unsaved reports whether a change of b waits to be written.
func (f *fleetSync) unsaved(b *Backend) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, field := range []string{fieldState, fieldWeight} {
		if _, ok := f.pending[changeKey(b.pool.name, b.addr.key, field)]; ok {
			return true
		}
	}
	return false
}

// round reads the stored changes, then writes the ones made here that are
// still the newest. Reading first means a change made elsewhere after ours
// is not overwritten by ours.
func (f *fleetSync) round() error {
	ref := f.store.Load()
	ctx, cancel := context.WithTimeout(context.Background(), storageRound)
	defer cancel()
	err := f.pull(ctx, ref.s)
	if werr := f.flush(ctx, ref.s); err == nil {
		err = werr
	}
	f.note(err)
	return err
}

// note records the outcome of a round: an error is logged when it starts,
// and the recovery when it ends.
func (f *fleetSync) note(err error) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	log := f.log.Load().With(zap.String("pool", f.pool.name), zap.String("storage", f.store.Load().name))
	if err == nil {
		f.lastSync = now
		if f.lastErr != "" {
			log.Info("fleet state: storage works again; run-time changes are saved and shared")
		}
		f.lastErr, f.errSince = "", time.Time{}
		return
	}
	if f.lastErr == "" {
		f.errSince = now
		log.Error("fleet state: storage failing; run-time changes hold on this instance and are retried every state_sync", zap.Error(err))
	}
	f.lastErr = err.Error()
}

// pull applies every stored change of this pool's current backends that
// is newer than the one they hold. Keys of backends not in the pool stay
// in the storage, unread.
func (f *fleetSync) pull(ctx context.Context, st certmagic.Storage) error {
	prefix := poolPrefix(f.pool.name)
	keys, err := st.List(ctx, prefix, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // nothing stored yet
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	byHash := f.backendsByHash()
	for _, key := range keys {
		hash, field, ok := strings.Cut(strings.TrimPrefix(key, prefix+"/"), "/")
		b := byHash[hash]
		if !ok || b == nil || (field != fieldState && field != fieldWeight) {
			continue
		}
		c, err := loadChange(ctx, st, key, field)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		if errors.Is(err, errUnreadable) {
			return err
		}
		if err == nil && c.Pool != f.pool.name {
			err = fmt.Errorf("holds pool %q", c.Pool)
		}
		if err != nil {
			f.garbage(key, err)
			continue
		}
		f.mu.Lock()
		if p, ok := f.pending[key]; ok && c.newer(changeMark{at: p.At, instance: p.Instance}) {
			delete(f.pending, key) // changed elsewhere since: theirs wins
		}
		delete(f.badLogged, key)
		f.mu.Unlock()
		if b.applyChange(field, c, true, false) {
			f.log.Load().Info("fleet state: applied a stored change",
				zap.String("pool", f.pool.name), zap.String("backend", b.URL()), zap.String("field", field),
				zap.String("state", c.State), zap.Any("weight", c.Weight),
				zap.Time("at", c.At), zap.String("instance", c.Instance))
		}
	}
	return nil
}

// garbage logs a key that does not hold a change, once per key and error.
func (f *fleetSync) garbage(key string, err error) {
	f.mu.Lock()
	seen := f.badLogged[key] == err.Error()
	f.badLogged[key] = err.Error()
	f.mu.Unlock()
	if !seen {
		f.log.Load().Error("fleet state: ignoring a stored value that is not a change",
			zap.String("pool", f.pool.name), zap.String("key", key), zap.Error(err))
	}
}

var errUnreadable = errors.New("storage unreadable")

// loadChange reads one key, refusing a value over maxStoredChange before
// loading it.
func loadChange(ctx context.Context, st certmagic.Storage, key, field string) (storedChange, error) {
	info, err := st.Stat(ctx, key)
	if err != nil {
		return storedChange{}, fmt.Errorf("%w: stat %s: %w", errUnreadable, key, err)
	}
	if info.Size > maxStoredChange {
		return storedChange{}, fmt.Errorf("%d bytes, over %d", info.Size, maxStoredChange)
	}
	data, err := st.Load(ctx, key)
	if err != nil {
		return storedChange{}, fmt.Errorf("%w: load %s: %w", errUnreadable, key, err)
	}
	return parseStoredChange(field, data)
}

// flush writes the changes made here; one that fails stays queued.
func (f *fleetSync) flush(ctx context.Context, st certmagic.Storage) error {
	f.mu.Lock()
	queued := make(map[string]storedChange, len(f.pending))
	for k, c := range f.pending {
		queued[k] = c
	}
	f.mu.Unlock()
	for key, c := range queued {
		data, err := json.Marshal(c)
		if err != nil {
			return err
		}
		if err := st.Store(ctx, key, data); err != nil {
			return fmt.Errorf("store %s: %w", key, err)
		}
		f.mu.Lock()
		if p, ok := f.pending[key]; ok && p.At.Equal(c.At) && p.Instance == c.Instance {
			delete(f.pending, key)
		}
		f.mu.Unlock()
	}
	return nil
}

// backendsByHash maps the key hash of each of the pool's current backends
// to it.
func (f *fleetSync) backendsByHash() map[string]*Backend {
	f.reg.mu.Lock()
	defer f.reg.mu.Unlock()
	bs, _ := f.pool.current()
	out := make(map[string]*Backend, len(bs))
	for _, b := range bs {
		out[keyHash(b.addr.key)] = b
	}
	return out
}

// poolPrefix and changeKey name the storage keys; hashes keep them
// file-name safe and free of anything a URL carried.
func poolPrefix(pool string) string { return fleetPrefix + "/" + keyHash(pool) }

func changeKey(pool, backendKey, field string) string {
	return poolPrefix(pool) + "/" + keyHash(backendKey) + "/" + field
}

func keyHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// instanceID names this instance in stored changes: Caddy's instance ID,
// kept in its data folder across restarts.
var instanceID = sync.OnceValue(func() string {
	id, err := caddy.InstanceID()
	if err != nil {
		return fmt.Sprintf("pid-%d-%x", os.Getpid(), rand.Uint64())
	}
	return id.String()
})

// FleetStatus is one pool's fleet sync as GET /lbpool/fleet shows it.
type FleetStatus struct {
	// The pool's name.
	Pool string `json:"pool"`
	// How often the stored changes are read: a duration, or "off" when
	// this instance keeps its run-time changes to itself.
	StateSync string `json:"state_sync"`
	// This instance's ID, as stored with its changes.
	Instance string `json:"instance"`
	// The storage, as Caddy describes it; empty when off.
	Storage string `json:"storage,omitempty"`
	// When the last sync that worked ended; null before the first.
	LastSync *time.Time `json:"last_sync"`
	// The error of the last sync or write; empty when it worked.
	Error string `json:"error"`
	// Since when the storage has been failing; null while it works.
	ErrorSince *time.Time `json:"error_since"`
	// Changes made here and not yet written to the storage.
	PendingWrites int `json:"pending_writes"`
}

// Fleet returns every pool's fleet sync, pools by name.
func Fleet() []FleetStatus {
	var out []FleetStatus
	for _, p := range defaultRegistry.backendsByPool("") {
		fs := FleetStatus{Pool: p.name, StateSync: StateSyncOff, Instance: instanceID()}
		if f := p.pool.fleet.Load(); f != nil {
			fs.StateSync = time.Duration(f.every.Load()).String()
			fs.Storage = f.store.Load().name
			f.mu.Lock()
			fs.LastSync = timeOrNil(f.lastSync)
			fs.Error = f.lastErr
			fs.ErrorSince = timeOrNil(f.errSince)
			fs.PendingWrites = len(f.pending)
			f.mu.Unlock()
		}
		out = append(out, fs)
	}
	return out
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// stateSyncOf reads the state_sync option: "" for the default, "off", or a
// duration of at least MinStateSync. Off is returned as 0.
func stateSyncOf(v string) (time.Duration, error) {
	switch v {
	case "":
		return DefaultStateSync, nil
	case StateSyncOff:
		return 0, nil
	}
	d, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("state_sync: bad duration %q: %v", v, err)
	}
	if d < MinStateSync {
		return 0, fmt.Errorf("state_sync: %q is shorter than %v (or use off)", v, MinStateSync)
	}
	return d, nil
}

// provisionFleet gives the spec the storage and loads the stored changes
// of the pool before the handler serves (at most storageWait: a storage
// that is down must not stop Caddy from starting).
func (h *Handler) provisionFleet(ctx caddy.Context, spec *poolSpec) error {
	d, err := stateSyncOf(h.StateSync)
	if err != nil {
		return fmt.Errorf("lbpool: %w", err)
	}
	spec.stateSync = d
	if d > 0 {
		spec.storage = ctx.Storage()
	}
	return nil
}

// loadFleet is provisionFleet's second half, once the pool exists.
func (h *Handler) loadFleet() {
	f := h.lease.pool.fleet.Load()
	if err := f.roundNow(storageWait); err != nil {
		f.note(err)
	}
}
