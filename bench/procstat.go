package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// CPU time comes from Linux's /proc: a process's utime+stime (all its
// threads) and each core's busy and idle time, both in clock ticks.

// clockTicks is the kernel's clock ticks per second (getconf CLK_TCK; 100 on
// nearly every Linux system, which is also the fallback).
var clockTicks = sync.OnceValue(func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || n <= 0 {
		return 100
	}
	return n
})

// processTicks returns utime+stime of a process from /proc/<pid>/stat.
func processTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces, so
	// fields are counted from the last ')': state is field 3, utime 14, stime 15.
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, fmt.Errorf("cpu time of pid %d: malformed /proc stat", pid)
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of pid %d: malformed /proc stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("cpu time of pid %d: malformed /proc stat", pid)
	}
	return utime + stime, nil
}

// cpuTicks is one core's line of /proc/stat.
type cpuTicks struct {
	cpu        int
	busy, idle int64
}

// readCPUTicks reads every core's busy (user, nice, system, irq, softirq,
// steal) and idle (idle, iowait) ticks.
func readCPUTicks() ([]cpuTicks, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, fmt.Errorf("core times: %w", err)
	}
	var out []cpuTicks
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		n, err := strconv.Atoi(f[0][3:])
		if err != nil {
			continue
		}
		var v [8]int64
		for i := range v {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
		out = append(out, cpuTicks{
			cpu:  n,
			busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7],
			idle: v[3] + v[4],
		})
	}
	return out, nil
}

// busyFractions returns each core's busy share between two readings, indexed
// by core number.
func busyFractions(before, after []cpuTicks) []float64 {
	n := 0
	for _, c := range after {
		n = max(n, c.cpu+1)
	}
	out := make([]float64, n)
	for _, a := range after {
		for _, b := range before {
			if a.cpu != b.cpu {
				continue
			}
			busy, idle := a.busy-b.busy, a.idle-b.idle
			if busy+idle > 0 {
				out[a.cpu] = float64(busy) / float64(busy+idle)
			}
		}
	}
	return out
}

// processMemory returns a process's resident set and its peak (VmRSS and
// VmHWM of /proc/<pid>/status), in KiB.
func processMemory(pid int) (rss, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("memory of pid %d: %s: %q", pid, name, value)
		}
		if name == "VmRSS" {
			rss = kib
		} else {
			peak = kib
		}
	}
	return rss, peak, nil
}
