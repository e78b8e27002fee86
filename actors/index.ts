/** The workflows an engine hosts by default (`jetflow engine` without `--workflows`). */
import type { WorkflowDefinition } from '../src/engine/registry.js';
import { order } from './order.js';

export const workflows: WorkflowDefinition[] = [order];
export default workflows;
