// fdtd.wgsl — a whole block of FDTD steps for every dispatched voice, in one dispatch.
//
// Equation (engine/reference.py has the derivation and the float64 twin):
//   u_tt = c²·s·∇²u − 2·d·u_t + 2σ₁·s·∇²u_t + f(t)·e(x,y)
// Scheme, per cell, L the 5-point Laplacian in grid units, γ = d·Δt, a = 2/(1+γ):
//   u⁺ = a·u + (1−a)·u⁻ + (C²s/(1+γ))·Lu + (ηs/(1+γ))·(Lu − Lu⁻) + footprint·kick/(1+γ)
// evaluated as u⁺ = u + δ − b·δ + …, δ = u − u⁻, b = 2γ/(1+γ) = 2 − a: in float32, a ≈ 2 − 2γ
// carries the damping in its last bits (a ULP of a is ~1% of a typical 2γ ≈ 2e-5, and the
// error grows with every step), b carries it at full relative precision; and Lu as
// (Σ neighbours − 4u) + b·(missing)·u, where −4u is exact; and the stiffness and loss terms as
// (s/(1+γ))·((C²+η)·Lu − η·Lu⁻), one per-cell coefficient, as the numba twin does (the form
// with C²s/(1+γ) and ηs/(1+γ) rounded apart drifted 20× further from the float64 twin on an
// almost free body, boundary 0.998, whose near-rigid mode is slow and strongly excited).
// Against the float64 twin over 2048 steps on an 8×8 grid (40 random bodies, lavapipe) the
// three forms took the error from a median 2.4e-5 (worst 4.4e-5) to 2.2e-6 (worst 5.0e-6),
// and on that almost free body from 1.4e-4 to 9e-6 (numba float32: 4.9e-6).
// Stable while (C² + 2η)·max(s) < 0.5; the host refuses records that break it.
// Boundary: the ghost cell outside an edge holds b·u_edge (b = 0 clamped, b = 1 free).
//
// Layout: one workgroup per voice (workgroup_id.x indexes `headers`). Each of the N²/4
// invocations owns a vertical strip of CELLS = 4 cells — column j = t mod N, rows
// 4·(t div N) … +3 — and keeps in registers their u, u⁻, coefficients and previous Laplacian
// Lu⁻. Workgroup memory holds two copies of the field (2·N²·4 bytes = 32 KiB at N = 64,
// lavapipe's limit): a step reads the current level's left/right neighbours (and the cells
// above and below the strip) from one copy and writes u⁺ into the other; the vertical
// neighbours inside the strip and the cell's own u and u⁻ come from registers. That is about
// 2.5 workgroup-memory reads a cell instead of 6, and a single barrier a step. The four
// cells are updated by calls with constant k, not a loop: with a loop the per-cell arrays are
// indexed dynamically and compilers keep them in slow local memory (on lavapipe a loop also
// spends its per-invocation loop budget). The copies swap by step parity; nothing is copied.
// Pickups are bilinear reads after every step, written to
// `pickups[out_offset + channel·n_fine + k]`. At the end u⁻ and u go back to `fields`.
//
// Buffers (engine/block.py defines the host side):
//   headers  VoiceHeader per dispatched voice          maps    [slot][stiffness, damping][N][N]
//   records  VoiceRecord (parameters, grid units)      fields  [voice slot][u⁻, u][N][N]
//   events   (sample, record) sorted per voice         pickups fine-rate output, 2 channels
//   force    one kick per output sample per voice
//
// GRID_N is set by engine/gpu.py:load_shader when the pipeline is built.

const GRID_N: u32 = 64u;
const NN: u32 = GRID_N * GRID_N;
const CELLS: u32 = 4u;
const WORKGROUP_SIZE: u32 = NN / CELLS;
const RECORD_RESET: u32 = 1u;

struct VoiceRecord {
    c2: f32, eta: f32, gamma_per_d: f32, gamma_add: f32,
    morph: f32, boundary: f32, exc_x: f32, exc_y: f32,
    exc_inv_2w2: f32, exc_norm: f32, pick_lx: f32, pick_ly: f32,
    pick_rx: f32, pick_ry: f32, map_a: u32, map_b: u32,
    flags: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

struct VoiceHeader {
    slot: u32, steps_per_sample: u32, n_samples: u32, record: u32,
    first_event: u32, n_events: u32, out_offset: u32, force_offset: u32,
}

struct Event { sample: u32, record: u32, }

@group(0) @binding(0) var<storage, read> headers: array<VoiceHeader>;
@group(0) @binding(1) var<storage, read> records: array<VoiceRecord>;
@group(0) @binding(2) var<storage, read> events: array<Event>;
@group(0) @binding(3) var<storage, read> force: array<f32>;
@group(0) @binding(4) var<storage, read> maps: array<f32>;
@group(0) @binding(5) var<storage, read_write> fields: array<f32>;
@group(0) @binding(6) var<storage, read_write> pickups: array<f32>;

var<workgroup> field: array<f32, 2u * NN>;

// Per-invocation state of the cells it owns.
var<private> coef_b: array<f32, CELLS>;
var<private> coef_k: array<f32, CELLS>;
var<private> coef_f: array<f32, CELLS>;
var<private> lu_prev: array<f32, CELLS>;
var<private> u: array<f32, CELLS>;
var<private> u_prev: array<f32, CELLS>;
var<private> boundary: f32;
var<private> c2_eta: f32;  // C² + η of the record in force
var<private> eta: f32;
var<private> pick: vec4<f32>;

// Cell k of invocation t: row 4·(t div N) + k, column t mod N.
fn cell(k: u32, t: u32) -> u32 {
    return ((t / GRID_N) * CELLS + k) * GRID_N + t % GRID_N;
}

// Laplacian of the level at `base` in workgroup memory, every neighbour read from there.
fn laplacian(base: u32, c: u32) -> f32 {
    let i = c / GRID_N;
    let j = c % GRID_N;
    let uc = field[base + c];
    var sum = 0.0;
    var missing = 0.0;
    if (i > 0u) { sum += field[base + c - GRID_N]; } else { missing += 1.0; }
    if (i < GRID_N - 1u) { sum += field[base + c + GRID_N]; } else { missing += 1.0; }
    if (j > 0u) { sum += field[base + c - 1u]; } else { missing += 1.0; }
    if (j < GRID_N - 1u) { sum += field[base + c + 1u]; } else { missing += 1.0; }
    return (sum - 4.0 * uc) + missing * boundary * uc;
}

// The coefficients of cell k of this invocation under a record (k is a constant at each call).
fn cell_coefficients(rec: VoiceRecord, k: u32, t: u32) {
    let c = cell(k, t);
    let base_a = rec.map_a * 2u * NN;
    let base_b = rec.map_b * 2u * NN;
    let s = mix(maps[base_a + c], maps[base_b + c], rec.morph);
    let d = mix(maps[base_a + NN + c], maps[base_b + NN + c], rec.morph);
    let gamma = rec.gamma_per_d * d + rec.gamma_add;
    let inv = 1.0 / (1.0 + gamma);
    coef_b[k] = 2.0 * gamma * inv;
    coef_k[k] = s * inv;
    let dx = f32(c % GRID_N) - rec.exc_x;
    let dy = f32(c / GRID_N) - rec.exc_y;
    coef_f[k] = exp(-(dx * dx + dy * dy) * rec.exc_inv_2w2) * rec.exc_norm * inv;
}

// Loads a record's per-cell coefficients; returns true when it asks for a reset.
fn apply_record(r: u32, t: u32) -> bool {
    let rec = records[r];
    boundary = rec.boundary;
    c2_eta = rec.c2 + rec.eta;
    eta = rec.eta;
    pick = vec4<f32>(rec.pick_lx, rec.pick_ly, rec.pick_rx, rec.pick_ry);
    cell_coefficients(rec, 0u, t);
    cell_coefficients(rec, 1u, t);
    cell_coefficients(rec, 2u, t);
    cell_coefficients(rec, 3u, t);
    return (rec.flags & RECORD_RESET) != 0u;
}

// Zero both levels of the voice (registers and workgroup memory) and Lu⁻.
fn reset_cells(t: u32) {
    for (var k = 0u; k < CELLS; k++) {
        let c = cell(k, t);
        field[c] = 0.0;
        field[NN + c] = 0.0;
    }
    u = array<f32, CELLS>();
    u_prev = array<f32, CELLS>();
    lu_prev = array<f32, CELLS>();
}

// u⁺ of cell k (k constant at each call) from the level at `cur`; `up`/`down` are the
// vertical neighbours (registers inside the strip), `edge_up`/`edge_down` say whether they
// lie outside the grid (then the ghost b·u stands in).
fn step_cell(k: u32, t: u32, cur: u32, up: f32, down: f32, kick: f32) -> f32 {
    let c = cell(k, t);
    let j = t % GRID_N;
    let uc = u[k];
    var sum = up + down;
    var missing = 0.0;
    if (j > 0u) { sum += field[cur + c - 1u]; } else { missing += 1.0; }
    if (j < GRID_N - 1u) { sum += field[cur + c + 1u]; } else { missing += 1.0; }
    // −4u is exact in float32; (b·missing − 4)·u would round ~0.5 ULP of 4u into a Lu that
    // is a small difference of large terms (Lu ≈ 1e-2·u for smooth modes)
    let lu = (sum - 4.0 * uc) + missing * boundary * uc;
    let du = uc - u_prev[k];
    let next = (uc + du) - coef_b[k] * du + coef_k[k] * (c2_eta * lu - eta * lu_prev[k])
        + coef_f[k] * kick;
    lu_prev[k] = lu;
    return next;
}

fn bilinear(base: u32, x: f32, y: f32) -> f32 {
    let j0 = min(u32(floor(x)), GRID_N - 1u);
    let i0 = min(u32(floor(y)), GRID_N - 1u);
    let fx = x - f32(j0);
    let fy = y - f32(i0);
    let j1 = min(j0 + 1u, GRID_N - 1u);
    let i1 = min(i0 + 1u, GRID_N - 1u);
    let top = mix(field[base + i0 * GRID_N + j0], field[base + i0 * GRID_N + j1], fx);
    let bottom = mix(field[base + i1 * GRID_N + j0], field[base + i1 * GRID_N + j1], fx);
    return mix(top, bottom, fy);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let h = headers[wid.x];
    let state = h.slot * 2u * NN;
    // Workgroup memory: the current level u at `cur`; u⁺ is written at `nxt`. At the start
    // u⁻ sits at `nxt`, for the Laplacian Lu⁻.
    var nxt = 0u;
    var cur = NN;
    for (var k = 0u; k < CELLS; k++) {
        let c = cell(k, t);
        field[c] = fields[state + c];
        field[NN + c] = fields[state + NN + c];
    }
    u[0] = field[NN + cell(0u, t)];
    u[1] = field[NN + cell(1u, t)];
    u[2] = field[NN + cell(2u, t)];
    u[3] = field[NN + cell(3u, t)];
    u_prev[0] = field[cell(0u, t)];
    u_prev[1] = field[cell(1u, t)];
    u_prev[2] = field[cell(2u, t)];
    u_prev[3] = field[cell(3u, t)];
    if (apply_record(h.record, t)) {
        reset_cells(t);
    }
    workgroupBarrier();
    lu_prev[0] = laplacian(nxt, cell(0u, t));
    lu_prev[1] = laplacian(nxt, cell(1u, t));
    lu_prev[2] = laplacian(nxt, cell(2u, t));
    lu_prev[3] = laplacian(nxt, cell(3u, t));
    // the strip's top and bottom rows: are the cells above / below inside the grid?
    let top_row = (t / GRID_N) * CELLS;
    let has_up = top_row > 0u;
    let has_down = top_row + CELLS < GRID_N;

    let os = h.steps_per_sample;
    let n_fine = h.n_samples * os;
    var ev = 0u;
    var step = 0u;
    for (var n = 0u; n < h.n_samples; n++) {
        // Events are uniform across the workgroup: every invocation takes the same branch.
        loop {
            if (ev >= h.n_events) { break; }
            let e = events[h.first_event + ev];
            if (e.sample != n) { break; }
            workgroupBarrier();
            if (apply_record(e.record, t)) {
                reset_cells(t);
            }
            workgroupBarrier();
            ev++;
        }
        let kick = force[h.force_offset + n];
        for (var sub = 0u; sub < os; sub++) {
            // neighbours beyond the strip, or the ghost b·u at the grid's edge
            let c0 = cell(0u, t);
            let c3 = cell(3u, t);
            var above = boundary * u[0];
            if (has_up) { above = field[cur + c0 - GRID_N]; }
            var below = boundary * u[3];
            if (has_down) { below = field[cur + c3 + GRID_N]; }
            let n0 = step_cell(0u, t, cur, above, u[1], kick);
            let n1 = step_cell(1u, t, cur, u[0], u[2], kick);
            let n2 = step_cell(2u, t, cur, u[1], u[3], kick);
            let n3 = step_cell(3u, t, cur, u[2], below, kick);
            field[nxt + c0] = n0;
            field[nxt + cell(1u, t)] = n1;
            field[nxt + cell(2u, t)] = n2;
            field[nxt + c3] = n3;
            u_prev = u;
            u = array<f32, CELLS>(n0, n1, n2, n3);
            workgroupBarrier();
            let tmp = nxt;
            nxt = cur;
            cur = tmp;
            if (t == 0u) {
                pickups[h.out_offset + step] = bilinear(cur, pick.x, pick.y);
            } else if (t == WORKGROUP_SIZE / 2u) {
                pickups[h.out_offset + n_fine + step] = bilinear(cur, pick.z, pick.w);
            }
            step++;
        }
    }
    fields[state + cell(0u, t)] = u_prev[0];
    fields[state + cell(1u, t)] = u_prev[1];
    fields[state + cell(2u, t)] = u_prev[2];
    fields[state + cell(3u, t)] = u_prev[3];
    fields[state + NN + cell(0u, t)] = u[0];
    fields[state + NN + cell(1u, t)] = u[1];
    fields[state + NN + cell(2u, t)] = u[2];
    fields[state + NN + cell(3u, t)] = u[3];
}
