;; The echo cell: `say` (and any other verb) replies with the payload it was given.
;; A core module exporting the `cell` world of contracts/wit/cell.wit by the canonical
;; ABI; examples/echo/build.sh turns it into the component echo.wasm.
(module
  (memory (export "memory") 1)
  ;; Bump allocator for the host's copies of the arguments; a store lives for one request.
  (global $heap (mut i32) (i32.const 1024))

  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
    (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.add
                  (i32.div_u
                    (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                    (i32.const 65536))
                  (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; handle(verb, payload) -> result<string, cell-error>: the result is written at 16 as
  ;; discriminant 0 (ok) and the payload's pointer and length.
  (func (export "handle")
    (param $verb_ptr i32) (param $verb_len i32) (param $payload_ptr i32) (param $payload_len i32)
    (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (local.get $payload_ptr))
    (i32.store (i32.const 24) (local.get $payload_len))
    (i32.const 16))
)
