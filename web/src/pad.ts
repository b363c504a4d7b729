/**
 * The drawing pad: pointer events, so mouse, pen and touch all draw; white ink on black, as in
 * MNIST. The canvas keeps its 280x280 backing store whatever its CSS size, so what is read back
 * is always the same grid.
 */

export const PAD_SIZE = 280;
// A full-height digit is framed into 20 of 28 pixels, so this brush becomes a stroke about
// 2 pixels wide: MNIST's pen.
const BRUSH_WIDTH = 22;
const INK = '#ffffff';
const PAPER = '#000000';
const MAIN_BUTTON = 0;

export class Pad {
  private readonly context: CanvasRenderingContext2D;
  private pointer: number | null = null;
  private last: [number, number] = [0, 0];

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly onStroke: () => void,
  ) {
    canvas.width = PAD_SIZE;
    canvas.height = PAD_SIZE;
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (!context) throw new Error('this browser gives no 2D canvas to draw on');
    this.context = context;
    context.lineWidth = BRUSH_WIDTH;
    context.lineCap = 'round';
    context.lineJoin = 'round';
    context.strokeStyle = INK;
    context.fillStyle = INK;
    this.clear();
    canvas.addEventListener('pointerdown', (event) => this.start(event));
    canvas.addEventListener('pointermove', (event) => this.move(event));
    canvas.addEventListener('pointerup', (event) => this.end(event));
    canvas.addEventListener('pointercancel', (event) => this.end(event));
  }

  clear(): void {
    this.context.save();
    this.context.fillStyle = PAPER;
    this.context.fillRect(0, 0, PAD_SIZE, PAD_SIZE);
    this.context.restore();
  }

  /** RGBA [280 * 280 * 4]. */
  pixels(): ImageData {
    return this.context.getImageData(0, 0, PAD_SIZE, PAD_SIZE);
  }

  /** Client coordinates -> backing-store pixels. */
  private point(event: PointerEvent): [number, number] {
    const rect = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - rect.left) * PAD_SIZE) / rect.width,
      ((event.clientY - rect.top) * PAD_SIZE) / rect.height,
    ];
  }

  private start(event: PointerEvent): void {
    if (event.button !== MAIN_BUTTON || this.pointer !== null) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.pointer = event.pointerId;
    this.last = this.point(event);
    this.context.beginPath();
    this.context.arc(...this.last, BRUSH_WIDTH / 2, 0, 2 * Math.PI);
    this.context.fill();
  }

  private move(event: PointerEvent): void {
    if (event.pointerId !== this.pointer) return;
    const events = event.getCoalescedEvents?.() ?? [];
    for (const each of events.length ? events : [event]) {
      const next = this.point(each);
      this.context.beginPath();
      this.context.moveTo(...this.last);
      this.context.lineTo(...next);
      this.context.stroke();
      this.last = next;
    }
  }

  private end(event: PointerEvent): void {
    if (event.pointerId !== this.pointer) return;
    this.pointer = null;
    this.onStroke();
  }
}
